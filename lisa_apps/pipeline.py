"""diagnose(): both probes, the norms table, the skew summary, a policy and the plots.

The pipeline behind ``lisa diagnose`` and the first half of ``lisa demo``, as a function so that
scripts and notebooks get the same files and objects the CLI writes. Given a model name (or a
function that builds the model), each probe builds its own model and drops it when done, so no
copy of the model is kept while a probe trains.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from diagnostics import plots
from diagnostics.files import library_versions
from diagnostics.norms import NORM_KINDS, REDUCTIONS
from diagnostics.policy import SamplingPolicy, derive_policy
from diagnostics.probes import PROBE_METHODS, run_probe
from diagnostics.recorder import COLUMNS, load_norms
from diagnostics.runtime import PRECISIONS, PeakMemory, resolve_device
from diagnostics.skew import skew_summary
from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LEARNING_RATES, DEFAULT_LORA_RANK
from lisa.layers import LayerMap
from lisa.signature import layer_signature
from lisa.validation import check_int, check_positive_float
from lisa_apps.data import DataCollator, tokenize_examples
from lisa_apps.outputs import RunFolder
from lisa_apps.probe_layout import LORA_PROBE_LAYOUTS, LoraProbeLayout, choose_lora_probe_layout
from lisa_apps.sharded_load import load_shards

__all__ = ["DiagnoseSettings", "Diagnosis", "diagnose"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiagnoseSettings:
    """Settings of the two probe runs and of the policy derived from them.

    Args:
        steps: optimizer steps per probe (step 0 is recorded too).
        lr_lora, lr_ft: AdamW learning rates of the LoRA and FT probes (defaults:
            ``lisa.defaults.DEFAULT_LEARNING_RATES``).
        rank: LoRA rank; alpha is ``lisa.defaults.default_lora_alpha(rank)``.
        gamma: blocks per period of the derived policy.
        temperature, floor: see :func:`lisa.samplers.inclusion_probabilities_from_scores`.
        batch_size, max_length: sequences per step and tokens per sequence.
        kinds, reduce: norm kinds and reductions recorded (see :mod:`diagnostics.norms`).
        policy_kind: the kind the policy is derived from (default: the first of ``kinds``).
        record_every: record every n steps.
        seed: batch order, LoRA initialisation and bootstrap seed.
        device, precision, gradient_checkpointing: where and how the probes train (see
            :mod:`diagnostics.runtime`).
        progress: show progress bars.
        probes: the probes to run: "lora" and "ft" (the policy's ratio needs both), plus
            "lora-eh" for LoRA whose embedding and head also train in full (at ``lr_lora``).
        distributed: None (one process), or under torchrun "fsdp2" (the FT probe sharded
            with FSDP2, the LoRA probe as ``lora_probe`` says) or "ddp" (both probes with
            DDP); ``batch_size`` is then the global batch and rank 0 alone writes the files.
        lora_probe: under "fsdp2", the LoRA probe's layout: "replicated" (DDP, a full copy of
            the frozen base per rank), "sharded" (FSDP2, loaded shard by shard from a
            safetensors folder) or "auto" (replicated when ``lisa estimate`` says a replica
            fits the rank; see :mod:`lisa_apps.probe_layout`). The "lora-eh" probe is always
            replicated.
    """

    steps: int = 20
    lr_lora: float = DEFAULT_LEARNING_RATES["lora"]
    lr_ft: float = DEFAULT_LEARNING_RATES["ft"]
    rank: int = DEFAULT_LORA_RANK
    gamma: int = DEFAULT_GAMMA
    temperature: float = 1.0
    floor: float = 0.0
    batch_size: int = 4
    max_length: int = 128
    kinds: tuple[str, ...] = ("weight",)
    reduce: tuple[str, ...] = ("l2",)
    policy_kind: str | None = None
    record_every: int = 1
    seed: int = 0
    device: str | None = None
    precision: str = "float32"
    gradient_checkpointing: bool = False
    progress: bool = True
    distributed: str | None = None
    probes: tuple[str, ...] = ("lora", "ft")
    lora_probe: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "gamma", "batch_size", "record_every"):
            check_int(name, getattr(self, name))
        check_int("max_length", self.max_length, minimum=2)
        check_int("seed", self.seed, minimum=0)
        for name in ("lr_lora", "lr_ft"):
            check_positive_float(name, getattr(self, name), hint="a learning rate")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "reduce", tuple(self.reduce))
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is not one of {PRECISIONS}")
        object.__setattr__(self, "probes", tuple(self.probes))
        unknown = [p for p in self.probes if p not in PROBE_METHODS]
        if unknown or len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probes={self.probes!r}: choose each of {PROBE_METHODS} at most once")
        if not {"lora", "ft"} <= set(self.probes):
            raise ValueError(
                f"probes={self.probes!r} must include 'lora' and 'ft': the policy is their ratio"
            )
        if self.distributed not in (None, "ddp", "fsdp2"):
            raise ValueError(f"distributed={self.distributed!r} is not one of None, 'ddp', 'fsdp2'")
        if self.lora_probe not in LORA_PROBE_LAYOUTS:
            raise ValueError(f"lora_probe={self.lora_probe!r} is not one of {LORA_PROBE_LAYOUTS}")
        if self.lora_probe != "auto" and self.distributed != "fsdp2":
            raise ValueError(
                f"lora_probe={self.lora_probe!r} applies to distributed='fsdp2' only (one "
                "process and DDP hold a full copy); leave it 'auto'"
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
        peak_memory_bytes: peak memory of each probe (see :class:`diagnostics.runtime.PeakMemory`).
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    policy: SamplingPolicy | None  # None on ranks other than 0 of a distributed run
    losses: dict[str, list[float]]
    files: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: dict[str, int] = field(default_factory=dict)


ModelSource = nn.Module | str | Callable[[], nn.Module]


def _model_factory(
    source: ModelSource, seed: int, distributed: str | None = None, lora_layout: str | None = None
) -> Callable[[str], nn.Module]:
    """A function of the probe method that builds that probe's model."""
    if isinstance(source, str):
        from lisa_apps.sharded_load import load_for_run

        # Under FSDP2 a sharded probe loads a safetensors folder shard by shard (an empty
        # model run_probe fills after sharding); a replicated one (DDP) loads it whole.
        return lambda method: load_for_run(
            source, seed=seed, distributed=_probe_distribution(distributed, method, lora_layout),
            method=method, shard_lora=True,
        )[0]  # fmt: skip
    if isinstance(source, nn.Module):
        # The caller keeps its model unchanged: each probe trains a copy (pass a name or a
        # function to avoid holding the copy beside the original).
        return lambda method: copy.deepcopy(source)
    if callable(source):
        return lambda method: source()
    raise TypeError(f"model must be a module, a model name or a function, not {source!r}")


def diagnose(
    model: ModelSource,
    tokenizer,
    examples: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike | RunFolder,
    settings: DiagnoseSettings | None = None,
    *,
    model_name: str | None = None,
    command: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Diagnosis:
    """Run a LoRA and an FT probe, then write norms, skew, policy and plots into ``out_dir``.

    Files: norms.csv (+ norms.json provenance), skew.csv, policy.json, layer_norms.png (the
    paper's Figure 2 layout), norm_heatmap.png, policy.png, and layer_norms-KIND.png for every
    further recorded kind. Each probe streams its rows while it runs (norms-lora.csv,
    norms-ft.csv), so an interruption keeps what was recorded.

    Args:
        model: a model name or folder (each probe loads its own), a function that builds the
            model, or a model (each probe trains a deep copy; yours is unchanged).
        tokenizer: its tokenizer (chat template for instruction examples).
        examples: training examples (see :func:`lisa_apps.data.load_examples`).
        out_dir: folder for the files (an earlier run's folder is refused unless
            ``overwrite``), or an open :class:`lisa_apps.outputs.RunFolder`; ``None`` writes
            nothing (the ranks other than 0 of a distributed run).
        settings: probe and policy settings; defaults to ``DiagnoseSettings()``.
        model_name: recorded in the provenance (default: the model's name).
        command: extra provenance, e.g. the CLI arguments.
        overwrite: replace an earlier run's results in ``out_dir``.

    Returns:
        A :class:`Diagnosis`.

    Example:
        >>> import tempfile
        >>> from lisa_apps.data import make_math_problems
        >>> from lisa_apps.models import load_model
        >>> _, tokenizer = load_model("tiny-llama")
        >>> settings = DiagnoseSettings(steps=1, batch_size=1, max_length=384, rank=2,
        ...                             progress=False)
        >>> diagnosis = diagnose("tiny-llama", tokenizer, make_math_problems(1),
        ...                      tempfile.mkdtemp(), settings)
        >>> round(float(diagnosis.policy.inclusion_probabilities.sum()), 6)  # = gamma
        2.0
        >>> sorted(diagnosis.files)  # doctest: +NORMALIZE_WHITESPACE
        ['layer_norms.png', 'norm_heatmap.png', 'norms.csv', 'norms.json', 'policy.json',
         'policy.png', 'skew.csv']
    """
    settings = settings or DiagnoseSettings()
    started = time.perf_counter()
    if isinstance(model, str):
        model_name = model_name or model
    owns_folder = not isinstance(out_dir, RunFolder | None)
    folder = (
        RunFolder(
            out_dir,
            command="lisa_apps.pipeline.diagnose",
            arguments=asdict(settings),
            overwrite=overwrite,
        )
        if owns_folder
        else out_dir
    )
    if folder is not None and folder.status == "new":
        folder.check()
    features = tokenize_examples(examples, tokenizer, max_length=settings.max_length)
    device = resolve_device(settings.device)
    if settings.distributed is not None:
        from lisa_apps.training.distributed import rank_device

        device = rank_device(device)
    layout = None
    if settings.distributed == "fsdp2" and "lora" in settings.probes:
        layout = _lora_probe_layout(model, settings, device)
        logger.info("LoRA probe %s: %s", layout.layout, layout.reason)
    build = _model_factory(
        model, settings.seed, settings.distributed, layout.layout if layout else None
    )
    if folder is not None and folder.status == "new":
        folder.open()
    try:
        diagnosis = _diagnose(build, features, tokenizer, folder, settings, device, model_name,
                              command, started, layout)  # fmt: skip
    except KeyboardInterrupt:
        if owns_folder:
            folder.close("interrupted")
        raise
    except BaseException:
        if owns_folder:
            folder.close("failed")
        raise
    if owns_folder:
        folder.close("finished")
    return diagnosis


def _diagnose(
    build, features, tokenizer, folder, settings, device, model_name, command, started, layout
):
    collate = DataCollator(tokenizer)
    tables, probe_records, losses, seconds, peaks = [], {}, {}, {}, {}
    layer_map_facts = None
    for method in settings.probes:
        probe_started = time.perf_counter()
        partial = None
        if folder is not None:
            partial = folder.file(f"norms-{method}.csv")  # streamed as the probe runs
            folder.file(f"norms-{method}.json")
        probe_model = build(method)
        if layer_map_facts is None:
            layer_map = LayerMap.from_model(probe_model)
            if settings.gamma > layer_map.num_blocks:
                raise ValueError(
                    f"gamma={settings.gamma} is larger than the model's "
                    f"{layer_map.num_blocks} blocks"
                )
            layer_map_facts = {
                "model_class": type(probe_model).__name__,
                "model_name": model_name
                or getattr(probe_model.config, "name_or_path", "")
                or type(probe_model).__name__,
                "group_names": list(layer_map.group_names),
                "num_blocks": layer_map.num_blocks,
                "tied": layer_map.tied,
                "layer_signature": layer_map.signature(),
            }
            block_signature = layer_signature(layer_map)
            del layer_map  # it references the probe's model, which must not outlive the probe
        with PeakMemory(device) as peak:
            table = run_probe(
                probe_model,
                features,
                method,
                collate=collate,
                steps=settings.steps,
                lr=settings.lr_ft if method == "ft" else settings.lr_lora,
                lora_rank=settings.rank,
                batch_size=settings.batch_size,
                record_every=settings.record_every,
                kinds=settings.kinds,
                reduce=settings.reduce,
                seed=settings.seed,
                device=device,
                precision=settings.precision,
                gradient_checkpointing=settings.gradient_checkpointing,
                progress=settings.progress,
                run=f"{method}-probe",
                path=partial,
                distributed=_probe_distribution(
                    settings.distributed, method, layout.layout if layout else None
                ),
                fill_shards=load_shards,
            )
            del probe_model
            gc.collect()
        seconds[method] = time.perf_counter() - probe_started
        peaks[method] = peak.peak_bytes
        losses[method] = list(table.attrs["losses"])
        probe_records[method] = {
            **table.attrs["sidecar"],
            "losses": losses[method],
            "wall_seconds": seconds[method],
            "record_seconds": table.attrs["record_seconds"],
            "peak_memory_bytes": peak.peak_bytes,
            "peak_memory_measure": peak.measure,
        }
        if method == "lora" and layout is not None:
            probe_records[method]["layout"] = asdict(layout)
        if settings.distributed is not None:
            from lisa_apps.training.distributed import gather_from_ranks

            probe_records[method]["peak_memory_bytes_per_rank"] = gather_from_ranks(peaks[method])
        logger.info(
            "%s probe: loss %.3f -> %.3f in %.0f s (%.1f s recording), peak %.0f MiB",
            method, losses[method][0], losses[method][-1], seconds[method],
            table.attrs["record_seconds"], peak.peak_bytes / 2**20,
        )  # fmt: skip
        tables.append(table if partial is None else load_norms(partial))

    table = pd.concat(tables, ignore_index=True)[list(COLUMNS)]
    if folder is None:  # a rank other than 0 of a distributed run: rank 0 writes the results
        seconds["total"] = time.perf_counter() - started
        summary = skew_summary(table, seed=settings.seed)
        return Diagnosis(table, summary, None, losses, [], seconds, peaks)
    folder.write_text("norms.csv", table.to_csv(index=False))
    sidecar = {
        "format": "lisa-norms-sidecar",
        "version": 1,
        "columns": list(COLUMNS),
        **layer_map_facts,
        "settings": asdict(settings),
        "command": dict(command or {}),
        "probes": probe_records,
        "versions": library_versions(),
    }
    folder.write_json("norms.json", sidecar)
    # The complete table and its sidecar are on disk: the per-probe stream files are redundant.
    for method in probe_records:
        for suffix in ("csv", "json"):
            (folder.path / f"norms-{method}.{suffix}").unlink(missing_ok=True)
            folder.written.remove(f"norms-{method}.{suffix}")

    summary = skew_summary(table, seed=settings.seed)
    folder.write_text("skew.csv", summary.to_csv(index=False))
    kind, reduce = settings.resolved_policy_kind, settings.reduce[0]
    policy = derive_policy(
        table,
        table,
        settings.gamma,
        temperature=settings.temperature,
        floor=settings.floor,
        kind=kind,
        reduce=reduce,
        signature=block_signature,
        source="norms.csv",
        model=layer_map_facts["model_name"],
    )
    policy.to_json(folder.file("policy.json"))
    files = ["norms.csv", "norms.json", "skew.csv", "policy.json"]
    plots.plot_layer_norms(table, folder.file("layer_norms.png"), kind=kind, reduce=reduce)
    # Over a short run the norms barely move; the relative view shows which layers did.
    plots.plot_norm_heatmap(
        table, folder.file("norm_heatmap.png"), kind=kind, reduce=reduce, relative=True
    )
    plots.plot_policy(policy, folder.file("policy.png"))
    files += ["layer_norms.png", "norm_heatmap.png", "policy.png"]
    for other in settings.kinds:
        if other != kind:
            name = f"layer_norms-{other}.png"
            plots.plot_layer_norms(table, folder.file(name), kind=other, reduce=reduce)
            files.append(name)
    seconds["total"] = time.perf_counter() - started
    return Diagnosis(
        table=table, summary=summary, policy=policy, losses=losses, files=files,
        seconds=seconds, peak_memory_bytes=peaks,
    )  # fmt: skip


def _probe_distribution(
    distributed: str | None, method: str, lora_layout: str | None = None
) -> str | None:
    """How a probe runs in several processes: FT as asked; LoRA sharded (FSDP2) only when its
    layout is "sharded", else replicated with DDP; LoRA with E and H (lora-eh) with DDP."""
    if distributed is None:
        return None
    if method == "ft" or (method == "lora" and lora_layout == "sharded"):
        return distributed
    return "ddp"


def _lora_probe_layout(source: ModelSource, settings: DiagnoseSettings, device) -> LoraProbeLayout:
    """The LoRA probe's layout under FSDP2, from the config of ``source`` when it has one."""
    from lisa_apps.training.distributed import rank_and_world

    config = getattr(source, "config", None)
    if isinstance(source, str):
        from lisa_apps.estimate import resolve_config

        try:
            config = resolve_config(source).config
        except ValueError as error:  # e.g. a hub name: no config here to estimate from
            logger.warning("no estimate for the LoRA probe's layout: %s", error)
    return choose_lora_probe_layout(
        settings.lora_probe, config, settings, device, rank_and_world()[1]
    )
