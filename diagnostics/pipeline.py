"""diagnostics.pipeline: both probes, the norms table, the skew summary, a policy and the plots.

This is the pipeline behind `lisa diagnose` and the first half of `lisa demo`, as a function so
that scripts and notebooks get the same files and objects the CLI writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from diagnostics import plots
from diagnostics.files import atomic_write_text, library_versions
from diagnostics.norms import NORM_KINDS, REDUCTIONS
from diagnostics.policy import SamplingPolicy, derive_policy
from diagnostics.probes import run_probe
from diagnostics.recorder import COLUMNS, load_norms
from diagnostics.skew import skew_summary
from lisa.layers import LayerMap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiagnoseSettings:
    """Settings of the two probe runs and of the policy derived from them.

    Args:
        steps: optimizer steps per probe (step 0 is recorded too).
        lr_lora, lr_ft: AdamW learning rates of the LoRA and FT probes.
        rank: LoRA rank (alpha = rank, so the update scale is 1).
        gamma: blocks per period of the derived policy.
        temperature, floor: see :func:`lisa.samplers.inclusion_probabilities_from_scores`.
        batch_size, max_length: sequences per step and tokens per sequence.
        kinds, reduce: norm kinds and reductions recorded (see :mod:`diagnostics.norms`).
        policy_kind: the kind the policy is derived from (default: the first of ``kinds``).
        record_every: record every n steps.
        seed: batch order, LoRA initialisation and bootstrap seed.
        progress: show progress bars.
    """

    steps: int = 20
    lr_lora: float = 2e-4
    lr_ft: float = 2e-5
    rank: int = 8
    gamma: int = 2
    temperature: float = 1.0
    floor: float = 0.0
    batch_size: int = 4
    max_length: int = 128
    kinds: tuple[str, ...] = ("weight",)
    reduce: tuple[str, ...] = ("l2",)
    policy_kind: str | None = None
    record_every: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "gamma", "batch_size", "max_length", "record_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for name in ("lr_lora", "lr_ft"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive learning rate")
        unknown = [k for k in self.kinds if k not in NORM_KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"kinds={self.kinds!r}: choose from {NORM_KINDS}")
        unknown = [r for r in self.reduce if r not in REDUCTIONS]
        if not self.reduce or unknown:
            raise ValueError(f"reduce={self.reduce!r}: choose from {REDUCTIONS}")
        if self.policy_kind is not None and self.policy_kind not in self.kinds:
            raise ValueError(
                f"policy_kind={self.policy_kind!r} is not among kinds={self.kinds!r}; "
                "record it too or pick one of them"
            )

    @property
    def resolved_policy_kind(self) -> str:
        """The norm kind the policy is derived from."""
        return self.policy_kind or self.kinds[0]


@dataclass
class Diagnosis:
    """What :func:`diagnose` produced (also written to ``out_dir``).

    Attributes:
        table: the tidy norms table of both probes.
        summary: :func:`diagnostics.skew.skew_summary` of it.
        policy: the policy derived from the LoRA / FT ratio of ``policy_kind``.
        losses: per-step training loss of each probe, ``{"lora": [...], "ft": [...]}``.
        files: names of the files written into ``out_dir``.
        seconds: wall time per phase (``"lora"``, ``"ft"``, ``"total"``).
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    policy: SamplingPolicy
    losses: dict[str, list[float]]
    files: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def diagnose(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    settings: DiagnoseSettings | None = None,
    *,
    model_name: str | None = None,
    command: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Run a LoRA and an FT probe, then write norms, skew, policy and plots into ``out_dir``.

    Files: norms.csv (+ norms.json provenance), skew.csv, policy.json, layer_norms.png (the
    paper's Figure 2 layout), norm_heatmap.png, policy.png, and layer_norms-KIND.png for every
    further recorded kind. Each probe streams its rows while it runs, so a crash keeps them.
    The caller's model is not modified (the probes train copies).

    Args:
        model: a causal LM (not peft-wrapped).
        tokenizer: its tokenizer (chat template for instruction examples).
        examples: training examples (see :func:`lisa.data.load_examples`) or tokenized features.
        out_dir: folder for the files (created).
        settings: probe and policy settings; defaults to ``DiagnoseSettings()``.
        model_name: recorded in the provenance (default: the model's class name).
        command: extra provenance, e.g. the CLI arguments.

    Returns:
        A :class:`Diagnosis`.

    Example:
        >>> import tempfile
        >>> from lisa.data import make_math_problems
        >>> from lisa.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> examples = make_math_problems(1)
        >>> settings = DiagnoseSettings(steps=1, batch_size=1, max_length=384, rank=2,
        ...                             progress=False)
        >>> diagnosis = diagnose(model, tokenizer, examples, tempfile.mkdtemp(), settings)
        >>> round(float(diagnosis.policy.inclusion_probabilities.sum()), 6)  # = gamma
        2.0
        >>> sorted(diagnosis.files)  # doctest: +NORMALIZE_WHITESPACE
        ['layer_norms.png', 'norm_heatmap.png', 'norms.csv', 'norms.json', 'policy.json',
         'policy.png', 'skew.csv']
    """
    settings = settings or DiagnoseSettings()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layer_map = LayerMap.from_model(model)
    if settings.gamma > layer_map.num_blocks:
        raise ValueError(
            f"gamma={settings.gamma} is larger than the model's {layer_map.num_blocks} blocks"
        )

    tables, probe_records, losses, seconds = [], {}, {}, {}
    for method, lr in (("lora", settings.lr_lora), ("ft", settings.lr_ft)):
        probe_started = time.perf_counter()
        partial = out / f"norms-{method}.csv"  # streamed as the probe runs: survives a crash
        table = run_probe(
            model,
            examples,
            method,
            steps=settings.steps,
            lr=lr,
            lora_rank=settings.rank,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            record_every=settings.record_every,
            kinds=settings.kinds,
            reduce=settings.reduce,
            seed=settings.seed,
            tokenizer=tokenizer,
            progress=settings.progress,
            run=f"{method}-probe",
            path=partial,
        )
        seconds[method] = time.perf_counter() - probe_started
        losses[method] = list(table.attrs["losses"])
        probe_records[method] = {
            **table.attrs["sidecar"],
            "losses": losses[method],
            "wall_seconds": seconds[method],
            "record_seconds": table.attrs["record_seconds"],
        }
        logger.info(
            "%s probe: loss %.3f -> %.3f in %.0f s (%.1f s recording)",
            method, losses[method][0], losses[method][-1], seconds[method],
            table.attrs["record_seconds"],
        )  # fmt: skip
        tables.append(load_norms(partial))

    table = pd.concat(tables, ignore_index=True)[list(COLUMNS)]
    norms_path = out / "norms.csv"
    atomic_write_text(norms_path, table.to_csv(index=False))
    sidecar = {
        "format": "lisa-norms-sidecar",
        "version": 1,
        "columns": list(COLUMNS),
        "model_class": type(model).__name__,
        "model_name": model_name or type(model).__name__,
        "group_names": list(layer_map.group_names),
        "num_blocks": layer_map.num_blocks,
        "tied": layer_map.tied,
        "layer_signature": layer_map.signature(),
        "settings": asdict(settings),
        "command": dict(command or {}),
        "probes": probe_records,
        "versions": library_versions(),
    }
    atomic_write_text(out / "norms.json", json.dumps(sidecar, indent=2, default=str) + "\n")
    # The complete table and its sidecar are on disk: the per-probe stream files are redundant.
    for method in probe_records:
        (out / f"norms-{method}.csv").unlink(missing_ok=True)
        (out / f"norms-{method}.json").unlink(missing_ok=True)

    summary = skew_summary(table, seed=settings.seed)
    atomic_write_text(out / "skew.csv", summary.to_csv(index=False))
    kind, reduce = settings.resolved_policy_kind, settings.reduce[0]
    policy = derive_policy(
        table,
        table,
        settings.gamma,
        temperature=settings.temperature,
        floor=settings.floor,
        kind=kind,
        reduce=reduce,
        layer_map=layer_map,
        source=str(norms_path),
    )
    policy.to_json(out / "policy.json")
    files = ["norms.csv", "norms.json", "skew.csv", "policy.json"]
    plots.plot_layer_norms(table, out / "layer_norms.png", kind=kind, reduce=reduce)
    # Over a short run the norms barely move; the relative view shows which layers did.
    plots.plot_norm_heatmap(
        table, out / "norm_heatmap.png", kind=kind, reduce=reduce, relative=True
    )
    plots.plot_policy(policy, out / "policy.png")
    files += ["layer_norms.png", "norm_heatmap.png", "policy.png"]
    for other in settings.kinds:
        if other != kind:
            plots.plot_layer_norms(
                table, out / f"layer_norms-{other}.png", kind=other, reduce=reduce
            )
            files.append(f"layer_norms-{other}.png")
    seconds["total"] = time.perf_counter() - started
    return Diagnosis(
        table=table, summary=summary, policy=policy, losses=losses, files=files, seconds=seconds
    )
