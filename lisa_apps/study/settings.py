"""StudySettings and the grid they span: variants x seeds x learning rates, one budget for all.

A *variant* is what trains and how: FT, LoRA rank r, or LISA with a policy and its knobs
(gamma, K, state policy, E/H trained or frozen, E/H's rate factor). The LISA variants are the
base configuration with each named policy, plus, for uniform LISA, one knob changed at a time
to each further value asked for (``gammas=(2, 8)`` adds a gamma-8 variant). Every variant runs
at every seed and at each learning rate of its sweep (the method's default rate times each
factor), all with the same steps, batch and data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lisa.config import STATE_POLICIES
from lisa.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_INTERVAL,
    DEFAULT_LEARNING_RATES,
    DEFAULT_LORA_RANK,
)
from lisa.validation import check_int, check_positive_float
from lisa_apps.training.config import METHODS

__all__ = ["EH_CHOICES", "POLICY_NAMES", "StudySettings", "Variant"]

#: LISA policies a study can name: uniform, or the policy derived from a score source.
POLICY_NAMES = ("uniform", "norm-ratio", "grad-norm", "outlier", "outlier-reverse")
#: Embedding and head: trained every period (the paper) or frozen.
EH_CHOICES = ("trained", "frozen")
BASE_POLICY = "uniform"
# Settings that only LISA variants use (refused when methods has no lisa).
_LISA_KNOBS = ("policies", "gammas", "intervals", "state_policies", "eh", "eh_lr_factors",
               "presets")  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One configuration of the grid (everything but the seed and the learning rate).

    ``change`` names the one LISA knob that differs from the base configuration (e.g.
    ``"gamma8"``), empty for the base itself and for FT and LoRA. ``eh_lr_factor``: the
    embedding and head train at this factor times the run's rate (the blocks and extras at the
    rate itself).

    Example:
        >>> Variant("lisa", policy="uniform", gamma=8, change="gamma8").name
        'lisa-uniform-gamma8'
    """

    method: str
    policy: str | None = None  # LISA only
    gamma: int = DEFAULT_GAMMA
    interval: int = DEFAULT_INTERVAL
    state_policy: str = "drop"
    train_eh: bool = True
    eh_lr_factor: float = 1.0
    lora_rank: int = DEFAULT_LORA_RANK
    change: str = ""
    preset: str = ""  # a preset variant: its name (lisa_apps.presets)
    learning_rate: float | None = None  # a preset's rate: the centre of its sweep
    lr_scheduler: str | None = None  # a preset's schedule (None: the study's)
    warmup_ratio: float = 0.0

    @property
    def name(self) -> str:
        if self.preset:
            return self.preset
        if self.method == "ft":
            return "ft"
        if self.method == "lora":
            return f"lora-r{self.lora_rank}"
        return f"lisa-{self.policy}" + (f"-{self.change}" if self.change else "")

    def row(self) -> dict[str, Any]:
        """The id columns of this variant in runs.csv and summary.csv."""
        lisa = self.method == "lisa"
        return {
            "variant": self.name,
            "method": self.method,
            "policy": self.policy if lisa else "",
            "gamma": self.gamma if lisa else None,
            "interval": self.interval if lisa else None,
            "state_policy": self.state_policy if lisa else "",
            "train_eh": self.train_eh if lisa else None,
            "eh_lr_factor": self.eh_lr_factor if lisa else None,
            "lora_rank": self.lora_rank if self.method == "lora" else None,
        }


@dataclass(frozen=True)
class StudySettings:
    """Everything that decides a study's results (recorded in its folder's manifest).

    Args:
        model: built-in model name or folder.
        data: ``"math"`` or a data set (see :func:`lisa_apps.data.load_examples`).
        data_format, data_split, data_columns, eval_data: its layout (a format, a split of a
            saved folder or hub set, ``"field=column,..."`` renames) and a separate held-out set.
        methods: among ``"ft"``, ``"lora"``, ``"lisa"``.
        policies: LISA policies (see :data:`POLICY_NAMES`); the first is the reference that
            paired differences are taken against when it is ``uniform``.
        seeds: number of seeds (0 .. seeds-1).
        steps, batch_size, max_length: the shared training budget.
        lr_factors: each variant's sweep: its method's base rate times each factor.
        lr_base: the base rate of a method, ``{"lisa": 4e-4}``, for every variant of it (a
            preset's own rate included); a method not named takes its default rate in
            :data:`lisa.defaults.DEFAULT_LEARNING_RATES`. A study begun before this setting can
            be resumed with the rates it began at (its finished runs are checked against them).
        tune_seeds: the rate is chosen on the first ``tune_seeds`` seeds (None: all of them);
            later seeds run only at the chosen rate.
        gammas, intervals, state_policies, eh, eh_lr_factors: LISA knobs; the first value of
            each is the base, every further value adds a uniform-LISA variant with that one
            knob changed. ``eh_lr_factors``: the embedding and head train at the factor times
            the run's (swept) rate, the blocks and extras at the rate (``(1, 0.25)`` adds
            ``lisa-uniform-ehlr0.25``); on a model with tied E/H the shared weight takes it.
        lora_rank: LoRA rank (alpha = 2 r).
        train_examples, val_examples, test_examples: the training pool, the validation split
            carved from the training data (rates are chosen on it) and the held-out test split.
        accuracy_examples: test problems whose greedy answer is scored (0: loss only).
        max_new_tokens: generation budget per answer.
        score_batches: batches the grad-norm and outlier sources read.
        outlier_threshold: M of the outlier source.
        probe_steps, norm_kind, norm_reduce: the LoRA and FT probes of the norm-ratio source.
        device, precision, gradient_checkpointing: where and how every run computes.
        lr_scheduler, warmup_steps, warmup_ratio: the rate schedule of every run (as
            :class:`lisa_apps.training.FinetuneConfig`'s).
        eval_every: also score each run's test loss every this many steps (curves.csv); None:
            only at the end.
        presets: ``lisa train`` presets (:mod:`lisa_apps.presets`) added as LISA variants, each
            with its preset's sampler, gamma, K, state policy, E/H and, if it names them, rate
            (the centre of its sweep) and schedule (instead of the study's).
    """

    model: str = "smollm2-135m"
    data: str = "math"
    data_format: str | None = None
    data_split: str | None = None
    data_columns: str | None = None
    eval_data: str | None = None
    methods: tuple[str, ...] = METHODS
    policies: tuple[str, ...] = ("uniform",)
    seeds: int = 3
    steps: int = 30
    batch_size: int = 4
    max_length: int = 256
    lr_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    lr_base: dict[str, float] | None = None
    tune_seeds: int | None = None
    gammas: tuple[int, ...] = (DEFAULT_GAMMA,)
    intervals: tuple[int, ...] = (DEFAULT_INTERVAL,)
    state_policies: tuple[str, ...] = ("drop",)
    eh: tuple[str, ...] = ("trained",)
    eh_lr_factors: tuple[float, ...] = (1.0,)
    lora_rank: int = DEFAULT_LORA_RANK
    train_examples: int = 1000
    val_examples: int = 32
    test_examples: int = 32
    accuracy_examples: int = 32
    max_new_tokens: int = 96
    score_batches: int = 4
    outlier_threshold: float = 5.0
    probe_steps: int = 10
    norm_kind: str = "weight"
    norm_reduce: str = "l2"
    device: str | None = None
    precision: str = "auto"
    gradient_checkpointing: bool = False
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    eval_every: int | None = None
    presets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("methods", "policies", "lr_factors", "gammas", "intervals",
                     "state_policies", "eh", "eh_lr_factors", "presets"):  # fmt: skip
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_choices("methods", self.methods, METHODS)
        _check_choices("policies", self.policies, POLICY_NAMES)
        _check_choices("state_policies", self.state_policies, STATE_POLICIES)
        _check_choices("eh", self.eh, EH_CHOICES)
        for name in ("seeds", "steps", "batch_size", "lora_rank", "train_examples",
                     "val_examples", "test_examples", "max_new_tokens", "score_batches",
                     "probe_steps"):  # fmt: skip
            check_int(name, getattr(self, name))
        check_int("max_length", self.max_length, minimum=2)
        check_int("accuracy_examples", self.accuracy_examples, minimum=0)
        if self.accuracy_examples > self.test_examples:
            raise ValueError(
                f"accuracy_examples={self.accuracy_examples} is more than the "
                f"{self.test_examples} test examples; score at most test_examples"
            )
        if self.tune_seeds is not None:
            check_int("tune_seeds", self.tune_seeds)
            if self.tune_seeds > self.seeds:
                raise ValueError(
                    f"tune_seeds={self.tune_seeds} is more than seeds={self.seeds}; use at most "
                    "seeds (or None: tune on every seed)"
                )
        if not self.lr_factors:
            raise ValueError("lr_factors is empty; give at least one factor, e.g. (1.0,)")
        for factor in self.lr_factors:
            check_positive_float("lr_factors", factor, hint="multiples of the default rate")
        _check_unique("lr_factors", self.lr_factors)
        if self.lr_base is not None:
            if not isinstance(self.lr_base, dict) or not self.lr_base:
                raise ValueError("lr_base is empty; give {method: rate}, e.g. {'lisa': 4e-4}, or None")
            for method, rate in self.lr_base.items():
                if method not in self.methods:
                    raise ValueError(
                        f"lr_base names {method!r}, which is not among the study's methods "
                        f"({', '.join(self.methods)}); drop it or add the method"
                    )
                check_positive_float("lr_base", rate, hint=f"the base rate of {method}")
            object.__setattr__(self, "lr_base", {m: float(self.lr_base[m]) for m in sorted(self.lr_base)})
        for name in ("gammas", "intervals"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} is empty; give at least one value")
            for value in values:
                check_int(name, value)
            _check_unique(name, values)
        if not self.eh_lr_factors:
            raise ValueError("eh_lr_factors is empty; give at least one factor, e.g. (1.0,)")
        for factor in self.eh_lr_factors:
            check_positive_float(
                "eh_lr_factors", factor, hint="multiples of the run's rate for E and H"
            )
        _check_unique("eh_lr_factors", self.eh_lr_factors)
        if self.eh[0] == "frozen" and self.eh_lr_factors != (1.0,):
            raise ValueError(
                f"eh_lr_factors={list(self.eh_lr_factors)} set the rate of the embedding and "
                "head, which eh's base value 'frozen' freezes; put 'trained' first in eh"
            )
        check_positive_float("outlier_threshold", self.outlier_threshold, hint="M")
        if self.presets:
            from lisa_apps.presets import available_presets

            _check_choices("presets", self.presets, available_presets())
        # The schedule goes through FinetuneConfig's own checks (names, warm-up exclusivity).
        self.schedule_config()
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, hint="steps between held-out scores")
            if self.eval_every > self.steps:
                raise ValueError(
                    f"eval_every={self.eval_every} is more than steps={self.steps}: no point "
                    "would be scored; use at most steps"
                )
        if "lisa" not in self.methods and self._lisa_only_settings():
            raise ValueError(
                f"{', '.join(self._lisa_only_settings())} apply to LISA; add lisa to methods"
            )

    def _lisa_only_settings(self) -> list[str]:
        defaults = StudySettings.__dataclass_fields__
        return [
            name
            for name in _LISA_KNOBS
            if getattr(self, name) != defaults[name].default
        ]

    # the grid ---------------------------------------------------------------------------------

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))

    @property
    def tuning_seeds(self) -> tuple[int, ...]:
        """The seeds on which every rate of the sweep runs."""
        return self.seed_list[: self.tune_seeds or self.seeds]

    @property
    def base_lisa(self) -> Variant:
        """Uniform LISA (or the first policy) with the first value of every knob."""
        return Variant(
            "lisa",
            policy=BASE_POLICY if BASE_POLICY in self.policies else self.policies[0],
            gamma=self.gammas[0],
            interval=self.intervals[0],
            state_policy=self.state_policies[0],
            train_eh=self.eh[0] == "trained",
            eh_lr_factor=self.eh_lr_factors[0],
            lora_rank=self.lora_rank,
        )

    def variants(self) -> tuple[Variant, ...]:
        """Every configuration of the grid, in the order the study runs them."""
        found: list[Variant] = []
        for method in self.methods:
            if method != "lisa":
                found.append(Variant(method, lora_rank=self.lora_rank))
                continue
            base = self.base_lisa
            found.extend(dataclasses.replace(base, policy=p) for p in self.policies)
            for value in self.gammas[1:]:
                found.append(dataclasses.replace(base, gamma=value, change=f"gamma{value}"))
            for value in self.intervals[1:]:
                found.append(dataclasses.replace(base, interval=value, change=f"K{value}"))
            for value in self.state_policies[1:]:
                found.append(dataclasses.replace(base, state_policy=value, change=value))
            for value in self.eh[1:]:
                trained = value == "trained"
                # Frozen E/H take no rate: the factor is the base's only while they train.
                found.append(dataclasses.replace(
                    base, train_eh=trained, change=f"eh-{value}",
                    eh_lr_factor=base.eh_lr_factor if trained else 1.0,
                ))  # fmt: skip
            for value in self.eh_lr_factors[1:]:
                found.append(
                    dataclasses.replace(base, eh_lr_factor=value, change=f"ehlr{value:g}")
                )
            found.extend(preset_variant(name) for name in self.presets)
        names = [v.name for v in found]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"the grid names variant {duplicates[0]} twice; drop a repeat")
        return tuple(found)

    def learning_rates(self, variant: Variant) -> tuple[float, ...]:
        """The sweep of a variant: its method's base rate times each factor (3 digits).

        The base rate is ``lr_base``'s for the method if it names one, else a preset's own rate
        if it names one, else the method's default rate.
        """
        default = (self.lr_base or {}).get(variant.method) or variant.learning_rate or DEFAULT_LEARNING_RATES[variant.method]
        return tuple(float(f"{default * factor:.3g}") for factor in self.lr_factors)

    def data_options(self) -> dict[str, Any]:
        """The loader options of ``data`` (keyword arguments of ``load_examples``)."""
        from lisa_apps.data.formats import parse_columns

        return {
            "data_format": self.data_format,
            "data_split": self.data_split,
            "columns": parse_columns(self.data_columns) or None,
            "eval_data": self.eval_data,
        }

    def schedule_config(self) -> dict[str, Any]:
        """The schedule's FinetuneConfig fields (checked by building a FinetuneConfig)."""
        from lisa_apps.training.config import FinetuneConfig

        fields = {"lr_scheduler": self.lr_scheduler, "warmup_steps": self.warmup_steps,
                  "warmup_ratio": self.warmup_ratio}  # fmt: skip
        FinetuneConfig(**fields)
        return fields

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (tuples as lists), what the manifest records and compares.

        Settings added after the first studies are left out at their defaults, so a study
        started before them still resumes (its manifest has no such key).
        """
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not (f.name in _ADDED_LATER and getattr(self, f.name) == f.default)
        }


_ADDED_LATER = ("lr_scheduler", "warmup_steps", "warmup_ratio", "eval_every", "presets",
                "eh_lr_factors", "lr_base")  # fmt: skip


def preset_variant(name: str) -> Variant:
    """The LISA variant of a ``lisa train`` preset: its sampler, gamma, K, state policy, E/H,
    rate and schedule.

    A preset that samples by a score source (owlore: outlier) gets the policy the study derives
    from that source at the preset's gamma; a cyclic preset (badam) has policy ``cyclic``.

    Example:
        >>> variant = preset_variant("badam")
        >>> (variant.policy, variant.gamma, variant.interval, variant.state_policy, variant.train_eh)
        ('cyclic', 1, 50, 'reset', False)
    """
    from lisa_apps.presets import get_preset

    preset = get_preset(name)
    options = preset.options
    if options.get("freeze_embeddings", False) != options.get("freeze_head", False):
        raise ValueError(
            f"preset {name} freezes only one of the embedding and head; a study variant trains "
            "both or neither"
        )
    return Variant(
        "lisa",
        policy=preset.needs_policy or options.get("sampler", "uniform"),
        gamma=options.get("gamma", DEFAULT_GAMMA),
        interval=options.get("interval", DEFAULT_INTERVAL),
        state_policy=options.get("state_policy", "drop"),
        train_eh=not options.get("freeze_embeddings", False),
        preset=name,
        learning_rate=options.get("lr"),
        lr_scheduler=options.get("lr_scheduler"),
        warmup_ratio=options.get("warmup_ratio", 0.0),
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_choices(name: str, values: tuple[str, ...], choices: tuple[str, ...]) -> None:
    if not values:
        raise ValueError(f"{name} is empty; choose from {', '.join(choices)}")
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ValueError(f"{name}: {unknown[0]!r} is not one of {', '.join(choices)}")
    _check_unique(name, values)


def _check_unique(name: str, values: tuple) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={list(values)} repeats a value")
