"""The study's figure: held-out loss of each variant at its chosen rate, seeds and 95% interval."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from diagnostics.files import atomic_write_bytes

__all__ = ["plot_curves", "plot_study"]


def plot_study(runs: pd.DataFrame, summary: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One row per variant: each seed's test loss (dots), the mean and its t interval (bar).

    Args:
        runs: runs.csv rows.
        summary: summary.csv rows (chosen rate, mean and interval per variant).
        path: the PNG to write (atomically).

    Returns:
        The path written.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = summary.reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(7.5, 0.45 * len(ordered) + 1.6))
    for position, row in ordered.iterrows():
        chosen = runs[
            (runs["variant"] == row["variant"]) & (runs["learning_rate"] == row["learning_rate"])
        ]
        axis.scatter(chosen["test_loss"], [position] * len(chosen), s=14, color="0.55", zorder=2)
        mean, low, high = row["test_loss_mean"], row["test_loss_low"], row["test_loss_high"]
        if pd.notna(low):
            axis.errorbar(mean, position, xerr=[[mean - low], [high - mean]], fmt="o",
                          color="C0", capsize=4, zorder=3)  # fmt: skip
        else:
            axis.scatter([mean], [position], color="C0", zorder=3)
    axis.set_yticks(range(len(ordered)))
    axis.set_yticklabels(
        [f"{v} (lr {lr:g})" for v, lr in zip(ordered["variant"], ordered["learning_rate"], strict=True)]
    )
    axis.invert_yaxis()
    axis.set_xlabel("held-out loss (dots: seeds; bar: mean and 95% t interval)")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return atomic_write_bytes(Path(path), buffer.getvalue())


def plot_curves(
    curve_summary: pd.DataFrame, path: str | os.PathLike, summary: pd.DataFrame | None = None
) -> Path:
    """Held-out loss against the step, one line per variant (mean over seeds, t interval band).

    With ``summary`` (summary.csv rows, for each variant's mean ``seconds_per_step_mean``) a
    second panel draws the same means against the wall time of training, step times seconds
    per step: the equal-time view (``summary_time.csv`` holds its paired statistics).

    Args:
        curve_summary: summary_curves.csv rows.
        path: the PNG to write (atomically).
        summary: summary.csv rows, or None for the step panel only.

    Returns:
        The path written.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_step = {}
    if summary is not None and "seconds_per_step_mean" in summary:
        per_step = dict(zip(summary["variant"].astype(str), summary["seconds_per_step_mean"], strict=True))
    panels = 2 if per_step else 1
    figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 4.5), squeeze=False)
    for number, (variant, frame) in enumerate(curve_summary.groupby("variant", sort=False)):
        color = f"C{number % 10}"
        label = f"{variant} (lr {frame['learning_rate'].iloc[0]:g})"
        xs = [("step", frame["step"])]
        if per_step:
            xs.append(("training seconds (step x mean s/step)",
                       frame["step"] * per_step.get(str(variant), float("nan"))))  # fmt: skip
        for axis, (_, x) in zip(axes[0], xs, strict=True):
            axis.plot(x, frame["eval_loss_mean"], marker="o", ms=3, color=color, label=label)
            if frame["eval_loss_low"].notna().any():
                axis.fill_between(x, frame["eval_loss_low"], frame["eval_loss_high"],
                                  color=color, alpha=0.15, linewidth=0)  # fmt: skip
    for axis, name in zip(axes[0], ["step", "training seconds (step x mean s/step)"], strict=False):
        axis.set_xlabel(name)
        axis.set_ylabel("held-out loss (mean over seeds; band: 95% t interval)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return atomic_write_bytes(Path(path), buffer.getvalue())
