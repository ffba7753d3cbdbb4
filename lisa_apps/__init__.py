"""The applications built on lisa and diagnostics: models, data, runs, the CLI and the demo.

``lisa_apps`` is where the commands live (``lisa_apps.commands.<name>`` for ``lisa <name>``)
and what they are made of: model loading with the embedded default model
(``lisa_apps.models``), tiny random models (``lisa_apps.tiny``), data (``lisa_apps.data``), the
fine-tuning runner (``lisa_apps.training``), the diagnose pipeline (``lisa_apps.pipeline``),
memory estimates from a config (``lisa_apps.estimate``), seeded studies (``lisa_apps.study``) and
output folders that never mix runs (``lisa_apps.outputs``). It may import ``lisa`` and
``diagnostics``; neither imports it. Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DataCollator": "lisa_apps.data",
    "extract_answer": "lisa_apps.data",
    "load_examples": "lisa_apps.data",
    "load_jsonl": "lisa_apps.data",
    "make_math_problems": "lisa_apps.data",
    "tokenize_examples": "lisa_apps.data",
    "Setup": "lisa_apps.estimate",
    "Workload": "lisa_apps.estimate",
    "family_names": "lisa_apps.estimate",
    "resolve_config": "lisa_apps.estimate",
    "suggestions": "lisa_apps.estimate",
    "DEFAULT_MODEL": "lisa_apps.models",
    "ModelInfo": "lisa_apps.models",
    "available_models": "lisa_apps.models",
    "inspect_model": "lisa_apps.models",
    "load_model": "lisa_apps.models",
    "load_tokenizer": "lisa_apps.models",
    "RunFolder": "lisa_apps.outputs",
    "DiagnoseSettings": "lisa_apps.pipeline",
    "Diagnosis": "lisa_apps.pipeline",
    "diagnose": "lisa_apps.pipeline",
    "build_tiny_model": "lisa_apps.tiny",
    "build_tiny_tokenizer": "lisa_apps.tiny",
    "FinetuneConfig": "lisa_apps.training",
    "FinetuneResult": "lisa_apps.training",
    "evaluate_loss": "lisa_apps.training",
    "finetune": "lisa_apps.training",
    "generate_answers": "lisa_apps.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lisa_apps' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
