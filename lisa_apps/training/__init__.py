"""Fine-tuning runs of LISA, LoRA and FT on one budget, with held-out scores before and after."""

from __future__ import annotations

from lisa_apps.training.config import METHODS, FinetuneConfig, TokenizedData
from lisa_apps.training.evaluation import evaluate, evaluate_loss, generate_answers
from lisa_apps.training.results import FinetuneResult, trainable_parameters, write_run
from lisa_apps.training.runner import finetune, resolve_precision

__all__ = [
    "METHODS",
    "FinetuneConfig",
    "FinetuneResult",
    "TokenizedData",
    "evaluate",
    "evaluate_loss",
    "finetune",
    "generate_answers",
    "resolve_precision",
    "trainable_parameters",
    "write_run",
]
