"""FinetuneConfig: the settings of one fine-tuning run, the same fields for every method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from diagnostics.runtime import PRECISIONS
from lisa.config import LisaConfig
from lisa.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_INTERVAL,
    DEFAULT_LEARNING_RATES,
    DEFAULT_LORA_RANK,
    default_lora_alpha,
)
from lisa.validation import check_fraction, check_int, check_positive_float

__all__ = ["METHODS", "FinetuneConfig"]

METHODS = ("lisa", "lora", "ft")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; every method reads the same fields, so runs compare.

    Args:
        method: ``"lisa"``, ``"lora"`` or ``"ft"``.
        steps: optimizer steps (the budget).
        learning_rate: AdamW learning rate; ``None`` takes
            ``lisa.defaults.DEFAULT_LEARNING_RATES[method]``.
        batch_size: training examples per step.
        max_length: longest tokenised example (see :func:`lisa_apps.data.tokenize_examples`).
        packing: join short training examples into rows of up to ``max_length`` tokens, each
            attending only to itself (:func:`lisa_apps.data.pack_features`).
        drop_long: drop examples longer than ``max_length`` instead of cutting their end.
        seed: seed for data order, LoRA init and the LISA schedule (unless ``lisa`` sets one).
        lr_scheduler: a transformers scheduler name; ``"constant"`` keeps short runs comparable.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        lora_rank: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator (update = alpha / r * B @ A); ``None`` takes
            ``lisa.defaults.default_lora_alpha(r)`` (2 r).
        lora_dropout: dropout on the LoRA input.
        lisa: the LISA settings; ``None`` means the defaults (``lisa.defaults``) with this seed.
        eval_batch_size: batch size for held-out loss and generation.
        max_new_tokens: generation budget per answer (the worked solutions need ~60 tokens).
        score_accuracy: generate answers and score exact match; ``False`` measures held-out
            loss only (generation dominates evaluation time on a CPU), accuracy is then None.
        device: ``None`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bf16-mixed on a CUDA device that supports it, else float32),
            ``"float32"``, ``"bf16-mixed"`` (bfloat16 autocast over float32 weights) or
            ``"bf16"`` (bfloat16 weights, grads and optimizer state).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        distributed: ``None`` (one process), ``"ddp"`` (transformers.Trainer under torchrun,
            DistributedDataParallel) or ``"fsdp2"`` (the plain loop of
            :mod:`lisa_apps.training.loop`, every block, E and H sharded with FSDP2); with
            several ranks ``batch_size`` is the global batch, split evenly over them.

    Example:
        >>> FinetuneConfig(method="ft", steps=10).resolved_learning_rate
        5e-05
    """

    method: str = "lisa"
    steps: int = 60
    learning_rate: float | None = None
    batch_size: int = 4
    max_length: int = 256
    packing: bool = False
    drop_long: bool = False
    seed: int = 0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lisa: LisaConfig | None = None
    eval_batch_size: int = 8
    max_new_tokens: int = 96
    score_accuracy: bool = True
    device: str | None = None
    precision: str = "auto"
    gradient_checkpointing: bool = False
    distributed: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}")
        for name in ("steps", "batch_size", "lora_rank", "eval_batch_size", "max_new_tokens"):
            check_int(name, getattr(self, name))
        check_int("max_length", self.max_length, minimum=2, hint="a prompt and a response token")
        check_int("seed", self.seed, minimum=0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.learning_rate is not None:
            check_positive_float("learning_rate", self.learning_rate, hint="or None for the default")
        if self.lora_alpha is not None:
            check_positive_float("lora_alpha", self.lora_alpha, hint="or None for 2 * rank")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        check_fraction("lora_dropout", self.lora_dropout)
        if self.lisa is not None and self.method != "lisa":
            raise ValueError(
                f"a LisaConfig was given with method={self.method!r}; use method='lisa' or drop it"
            )
        if self.lisa is not None and not isinstance(self.lisa, LisaConfig):
            raise ValueError(f"lisa must be a LisaConfig, got {type(self.lisa).__name__}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision={self.precision!r} is not one of {('auto', *PRECISIONS)}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError("gradient_checkpointing must be True or False")
        if self.distributed not in (None, "ddp", "fsdp2"):
            raise ValueError(
                f"distributed={self.distributed!r} is not one of None, 'ddp', 'fsdp2'"
            )

    @property
    def resolved_learning_rate(self) -> float:
        """The learning rate used: the given one, or the method's default."""
        if self.learning_rate is None:
            return DEFAULT_LEARNING_RATES[self.method]
        return float(self.learning_rate)

    @property
    def resolved_lora_alpha(self) -> float:
        """The LoRA alpha used: the given one, or 2 r."""
        return default_lora_alpha(self.lora_rank) if self.lora_alpha is None else self.lora_alpha

    @property
    def resolved_lisa(self) -> LisaConfig:
        """The LISA settings used (defaults filled in with this run's seed)."""
        if self.lisa is not None:
            return self.lisa
        return LisaConfig(gamma=DEFAULT_GAMMA, interval=DEFAULT_INTERVAL, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings, defaults resolved (a sampler without spec() by its class name)."""
        settings = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lisa"
        }
        settings["learning_rate"] = self.resolved_learning_rate
        if self.method == "lisa":
            lisa = self.resolved_lisa
            try:
                settings["lisa"] = lisa.to_dict()
            except ValueError:
                settings["lisa"] = {
                    f.name: getattr(lisa, f.name) for f in dataclasses.fields(lisa)
                } | {"sampler": type(lisa.sampler).__name__}
            if settings["lisa"].get("layer_signature") is not None:
                settings["lisa"]["layer_signature"] = "(recorded in the policy)"
        if self.method == "lora":
            settings["lora_alpha"] = self.resolved_lora_alpha
        return settings
