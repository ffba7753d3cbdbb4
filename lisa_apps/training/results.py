"""A finished run: its :class:`FinetuneResult`, its files, and the trainable-parameter count."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lisa.config import LisaConfig
from lisa.layers import LayerMap, block_index
from lisa_apps.outputs import RunFolder
from lisa_apps.training.config import FinetuneConfig

__all__ = ["FinetuneResult", "trainable_parameters", "write_run"]


@dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        model: the trained model (a peft ``PeftModel`` for LoRA).
        metrics: the ``metrics.json`` content: settings, before/after loss and accuracy, timing,
            peak memory and optimizer-state bytes.
        log_history: the Trainer's log history, one row per log (``step``, ``loss``, ...).
        active_history: LISA's ``(step, active_blocks)`` draws; empty for LoRA and FT.
        predictions: ``{"before": DataFrame, "after": DataFrame}`` of generated answers.
        out_dir: where files were written, or ``None``.
        files: the names written into ``out_dir`` by this run.
    """

    model: Any
    metrics: dict[str, Any]
    log_history: pd.DataFrame
    active_history: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)


def write_run(result: FinetuneResult, folder: RunFolder) -> list[str]:
    """Write a run's files into an open :class:`~lisa_apps.outputs.RunFolder` (atomically).

    Files: ``metrics.json``, ``log_history.csv``, ``predictions_before.csv`` /
    ``predictions_after.csv``, ``active_sets.json`` (LISA only) and ``loss_curve.png``.

    Returns:
        The names written.
    """
    from diagnostics.plots import plot_loss_curve

    names = ["metrics.json", "log_history.csv"]
    folder.write_text("metrics.json", json.dumps(result.metrics, indent=2, default=str))
    folder.write_text("log_history.csv", result.log_history.to_csv(index=False))
    for stage, table in result.predictions.items():
        if table.empty:
            continue
        names.append(f"predictions_{stage}.csv")
        folder.write_text(names[-1], table.to_csv(index=False))
    if result.metrics["method"] == "lisa":
        history = [
            {"step": step, "active_blocks": list(blocks)} for step, blocks in result.active_history
        ]
        names.append("active_sets.json")
        folder.write_text("active_sets.json", json.dumps(history, indent=1))
    if "loss" in result.log_history and result.log_history["loss"].notna().any():
        title = f"{result.metrics['method'].upper()} on {result.metrics['model']}"
        names.append("loss_curve.png")
        plot_loss_curve(result.log_history, folder.file("loss_curve.png"), title=title)
    return names


def trainable_parameters(model, config: FinetuneConfig) -> int:
    """Parameters that train at a time: all for FT, adapters for LoRA, E+H+gamma blocks for LISA."""
    if config.method != "lisa":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    lisa = config.resolved_lisa
    layer_map = LayerMap.from_model(model, lisa.blocks_path)
    fixed = {"embed": lisa.train_embeddings, "head": lisa.train_head, "extras": lisa.train_extras}
    always = sum(
        layer_map.numel(group)
        for group, on in fixed.items()
        if on and group in layer_map.group_names
    )
    block_sizes = sorted(
        (
            layer_map.numel(group)
            for group in layer_map.group_names
            if block_index(group) is not None
        ),
        reverse=True,
    )
    # Blocks of one model are alike; the largest gamma bound the peak.
    return always + sum(block_sizes[: _lisa_gamma(lisa, layer_map.num_blocks)])


def _lisa_gamma(lisa: LisaConfig, num_blocks: int) -> int:
    sampler_gamma = getattr(lisa.sampler, "gamma", None)
    return min(num_blocks, int(sampler_gamma if sampler_gamma is not None else lisa.gamma))
