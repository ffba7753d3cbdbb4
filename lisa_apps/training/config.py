"""FinetuneConfig: the settings of one fine-tuning run, the same fields for every method."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diagnostics.runtime import PRECISIONS
from lisa.config import LisaConfig
from lisa.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_INTERVAL,
    DEFAULT_LEARNING_RATES,
    DEFAULT_LORA_RANK,
    DEFAULT_LR_SCHEDULER,
    DEFAULT_WARMUP_RATIO,
    default_lora_alpha,
)
from lisa.validation import check_fraction, check_int, check_positive_float

__all__ = [
    "DEFAULT_STEPS", "METHODS", "REPORT_TARGETS", "FinetuneConfig", "TokenizedData",
    "lr_scheduler_names",
]  # fmt: skip

METHODS = ("lisa", "lora", "ft")
# The budget when neither steps nor epochs is given.
DEFAULT_STEPS = 60
# Where training logs go besides log_history.csv (transformers' report_to names).
REPORT_TARGETS = ("tensorboard", "wandb")
# transformers schedulers that need more than a warm-up and a length: an evaluation metric every
# step (reduce_lr_on_plateau, greedy) or extra settings (a minimum rate, a decay length).
_SCHEDULERS_NEEDING_MORE = {
    "reduce_lr_on_plateau": "an evaluation metric at every step",
    "greedy": "an evaluation metric at every step",
    "cosine_with_min_lr": "a minimum rate (lr_scheduler_kwargs)",
    "cosine_warmup_with_min_lr": "a minimum rate (lr_scheduler_kwargs)",
    "warmup_stable_decay": "a decay length (lr_scheduler_kwargs)",
}


def lr_scheduler_names() -> tuple[str, ...]:
    """The transformers scheduler names a run accepts (transformers.SchedulerType, less those
    that need an evaluation metric or extra settings).

    Example:
        >>> lr_scheduler_names()[:3]
        ('linear', 'cosine', 'cosine_with_restarts')
    """
    from transformers import SchedulerType

    return tuple(s.value for s in SchedulerType if s.value not in _SCHEDULERS_NEEDING_MORE)


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; every method reads the same fields, so runs compare.

    Args:
        method: ``"lisa"``, ``"lora"`` or ``"ft"``.
        steps: optimizer steps (the budget); ``None`` with ``epochs`` unset means
            ``DEFAULT_STEPS`` (60). Give ``steps`` or ``epochs``, not both.
        epochs: passes over the training examples instead of ``steps`` (may be fractional):
            ``ceil(epochs * ceil(ceil(examples / batch_size) / grad_accum))`` steps, as
            transformers.Trainer counts them.
        learning_rate: AdamW learning rate; ``None`` takes
            ``lisa.defaults.DEFAULT_LEARNING_RATES[method]``.
        batch_size: training examples per step.
        max_length: longest tokenised example (see :func:`lisa_apps.data.tokenize_examples`).
        packing: join short training examples into rows of up to ``max_length`` tokens, each
            attending only to itself (:func:`lisa_apps.data.pack_features`).
        drop_long: drop examples longer than ``max_length`` instead of cutting their end.
        seed: seed for data order, LoRA init and the LISA schedule (unless ``lisa`` sets one).
        lr_scheduler: a transformers scheduler name (:func:`lr_scheduler_names`); ``None``
            takes ``lisa.defaults.DEFAULT_LR_SCHEDULER`` (cosine). ``"constant"`` (no warm-up)
            keeps short runs comparable.
        warmup_steps: linear warm-up steps (from 0 to the learning rate).
        warmup_ratio: warm-up as a fraction of the steps, ``ceil(steps * ratio)``; give it or
            ``warmup_steps``, not both. ``None`` takes ``lisa.defaults.DEFAULT_WARMUP_RATIO``
            (0.1) for a schedule that warms up, and 0 with ``warmup_steps`` or ``"constant"``.
        grad_accum: micro-batches of ``batch_size`` examples per optimizer step (gradient
            accumulation); a step then takes ``batch_size * grad_accum`` examples.
        weight_decay: AdamW weight decay (not on biases and norm weights, as the Trainer does).
        lr_embed, lr_head, lr_extras: absolute learning rates of the embedding, the head and the
            extras (final norm, ...); ``None``: the learning rate. LISA and FT only (LoRA trains
            none of them); on a model with tied E/H the shared weight takes ``lr_embed``
            (:func:`lisa.param_groups`).
        weight_decay_embed, weight_decay_head, weight_decay_extras: their weight decays;
            ``None``: ``weight_decay``.
        max_grad_norm: clip the global gradient norm to this before each step; 0 = no clipping.
        save_steps: write a checkpoint every this many steps (``None``: none); needs an output
            folder. One process and DDP (the Trainer) only.
        save_total_limit: keep at most this many newest checkpoints (``None``: all).
        report_to: where logs go besides ``log_history.csv``: any of ``REPORT_TARGETS``
            (``"tensorboard"`` writes event files into the run folder's ``tensorboard/``).
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
        offload: under ``"fsdp2"``, keep parameters, grads and optimizer state in CPU memory
            (FSDP2's ``CPUOffloadPolicy``); the device holds one unit gathered at a time.

    Example:
        >>> FinetuneConfig(method="ft", steps=10).resolved_learning_rate
        5e-05
    """

    method: str = "lisa"
    steps: int | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int = 4
    max_length: int = 256
    packing: bool = False
    drop_long: bool = False
    seed: int = 0
    lr_scheduler: str | None = None
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    grad_accum: int = 1
    weight_decay: float = 0.0
    lr_embed: float | None = None
    lr_head: float | None = None
    lr_extras: float | None = None
    weight_decay_embed: float | None = None
    weight_decay_head: float | None = None
    weight_decay_extras: float | None = None
    max_grad_norm: float = 1.0
    save_steps: int | None = None
    save_total_limit: int | None = None
    report_to: tuple[str, ...] = ()
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
    offload: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}")
        self._check_budget()
        for name in ("batch_size", "grad_accum", "lora_rank", "eval_batch_size", "max_new_tokens"):
            check_int(name, getattr(self, name))
        check_int("max_length", self.max_length, minimum=2, hint="a prompt and a response token")
        check_int("seed", self.seed, minimum=0)
        self._check_schedule()
        for name in ("save_steps", "save_total_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), hint="or None")
        report_to = (self.report_to,) if isinstance(self.report_to, str) else self.report_to
        object.__setattr__(self, "report_to", tuple(report_to))
        for target in self.report_to:
            if target not in REPORT_TARGETS:
                raise ValueError(
                    f"report_to={target!r} is not one of {REPORT_TARGETS}; leave it empty to write "
                    "log_history.csv only"
                )
        if self.learning_rate is not None:
            check_positive_float("learning_rate", self.learning_rate, hint="or None for the default")
        if self.lora_alpha is not None:
            check_positive_float("lora_alpha", self.lora_alpha, hint="or None for 2 * rank")
        for name in ("weight_decay", "max_grad_norm"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a number >= 0")
        check_fraction("lora_dropout", self.lora_dropout)
        self._check_group_settings()
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
        if self.offload and self.distributed != "fsdp2":
            raise ValueError(
                f"offload=True applies to distributed='fsdp2' only, not {self.distributed!r}"
            )

    def _check_group_settings(self) -> None:
        for name, value in self.group_settings.items():
            if name.startswith("lr_"):
                check_positive_float(name, value, hint="or None for the learning rate")
            elif isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name}={value!r} must be a number >= 0, or None")
        if self.group_settings and self.method == "lora":
            raise ValueError(
                f"{next(iter(self.group_settings))}={next(iter(self.group_settings.values()))!r}: "
                "LoRA trains no embedding, head or extras; drop it or use method 'lisa' or 'ft'"
            )

    @property
    def group_settings(self) -> dict[str, float]:
        """The per-group rates and decays given (``lr_embed``, ...), None ones left out."""
        names = ("lr_embed", "lr_head", "lr_extras", "weight_decay_embed", "weight_decay_head",
                 "weight_decay_extras")  # fmt: skip
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _check_budget(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(
                f"steps={self.steps!r} and epochs={self.epochs!r} both set the length of the run; "
                "give one of them"
            )
        if self.epochs is not None:
            if not (isinstance(self.epochs, (int, float)) and 0 < self.epochs < float("inf")):
                raise ValueError(f"epochs={self.epochs!r} must be a finite number > 0")
            return
        if self.steps is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)
        check_int("steps", self.steps, hint="optimizer steps")

    def _check_schedule(self) -> None:
        if self.lr_scheduler is None:
            object.__setattr__(self, "lr_scheduler", DEFAULT_LR_SCHEDULER)
        if self.warmup_ratio is None:
            warms_up = self.lr_scheduler != "constant" and not self.warmup_steps
            object.__setattr__(self, "warmup_ratio", DEFAULT_WARMUP_RATIO if warms_up else 0.0)
        names = lr_scheduler_names()
        if self.lr_scheduler not in names:
            needs = _SCHEDULERS_NEEDING_MORE.get(self.lr_scheduler)
            what = f"needs {needs}, which a run does not take" if needs else "is not a scheduler"
            raise ValueError(
                f"lr_scheduler={self.lr_scheduler!r} {what}; use one of {', '.join(names)}"
            )
        check_int("warmup_steps", self.warmup_steps, minimum=0, hint="linear warm-up steps")
        check_fraction("warmup_ratio", self.warmup_ratio)
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio} both set "
                "the warm-up; give one of them"
            )
        if (self.warmup_steps or self.warmup_ratio) and self.lr_scheduler == "constant":
            raise ValueError(
                "lr_scheduler='constant' has no warm-up; use 'constant_with_warmup' or drop the "
                "warm-up"
            )

    def training_steps(self, num_examples: int) -> int:
        """Optimizer steps of the run on ``num_examples`` examples: ``steps``, or the epochs
        counted as transformers.Trainer counts them on one process (a last partial batch is a
        batch, a last partial accumulation a step).

        Example:
            >>> FinetuneConfig(epochs=1.5, batch_size=4, grad_accum=2).training_steps(30)
            6
        """
        if self.epochs is None:
            return int(self.steps)
        batches = math.ceil(num_examples / self.batch_size)
        per_epoch = max(math.ceil(batches / self.grad_accum), 1)
        return math.ceil(self.epochs * per_epoch)

    def warmup(self, num_steps: int) -> int:
        """Warm-up steps of a run of ``num_steps`` steps (the Trainer's rule for a ratio).

        Example:
            >>> FinetuneConfig(lr_scheduler="cosine", warmup_ratio=0.1).warmup(25)
            3
        """
        if self.warmup_ratio:
            return math.ceil(num_steps * self.warmup_ratio)
        return int(self.warmup_steps)

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


@dataclass(frozen=True)
class TokenizedData:
    """Training and held-out examples tokenised once, for several runs on the same data.

    :func:`lisa_apps.training.finetune` tokenises its examples itself unless it is given one of
    these (``features=``): a caller that trains many runs on the same examples, length rule and
    tokenizer (``lisa study``) tokenises once and every run costs its training and scoring
    only. The features are read, never changed, so one object serves every run.

    Args:
        train: the tokenised training examples (:func:`lisa_apps.data.tokenize_examples`),
            before any packing (a run packs them when its config asks).
        held_out: the tokenised held-out examples, from the run's ``eval_examples``.
        max_length, drop_long: the length rule they were tokenised with; a run whose config
            has another is refused.
        vocabulary_size: ``len(tokenizer)`` of the tokenizer that made them; a run with a
            tokenizer of another size is refused.

    Example:
        >>> from lisa_apps.models import load_tokenizer
        >>> from lisa_apps.data import make_math_problems
        >>> data = TokenizedData.tokenize(make_math_problems(4), make_math_problems(2, split="test"),
        ...                               load_tokenizer("tiny-llama"), max_length=384)
        >>> len(data.train), len(data.held_out), data.max_length
        (4, 2, 384)
    """

    train: tuple[dict, ...]
    held_out: tuple[dict, ...]
    max_length: int
    drop_long: bool
    vocabulary_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "held_out", tuple(self.held_out))
        check_int("max_length", self.max_length, minimum=2, hint="a prompt and a response token")

    @classmethod
    def tokenize(
        cls,
        train_examples: Sequence[dict],
        eval_examples: Sequence[dict],
        tokenizer,
        *,
        max_length: int,
        drop_long: bool = False,
    ) -> TokenizedData:
        """Tokenise both sets as :func:`lisa_apps.training.finetune` would with this rule."""
        from lisa_apps.data import tokenize_examples

        rule = {"max_length": max_length, "drop_long": drop_long}
        return cls(
            tokenize_examples(train_examples, tokenizer, **rule),
            tokenize_examples(eval_examples, tokenizer, **rule),
            max_length, drop_long, len(tokenizer),
        )  # fmt: skip

    def check(self, config: FinetuneConfig, tokenizer) -> None:
        """Refuse a run these features were not made for (another length rule or tokenizer)."""
        made = (self.max_length, self.drop_long)
        if made != (config.max_length, config.drop_long):
            raise ValueError(
                f"the features were tokenised with max_length={self.max_length}, "
                f"drop_long={self.drop_long}, the run has max_length={config.max_length}, "
                f"drop_long={config.drop_long}; tokenise again with the run's rule"
            )
        if len(tokenizer) != self.vocabulary_size:
            raise ValueError(
                f"the features were tokenised by a tokenizer of {self.vocabulary_size} tokens, "
                f"the run's has {len(tokenizer)}; tokenise again with the run's tokenizer"
            )
