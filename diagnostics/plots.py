"""Plots of norm profiles, policies and realised inclusion frequencies (seaborn, Agg canvas).

The only module that imports matplotlib and seaborn, and only when a plot is drawn. Figures are
built on an Agg canvas without pyplot, so drawing never changes the caller's backend nor keeps
figures alive in pyplot's registry. Each function takes its data and an optional path, saves
the figure there when given, and returns the matplotlib Figure.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diagnostics.files import atomic_write_bytes
from diagnostics.skew import mean_norms

__all__ = [
    "inclusion_frequencies",
    "plot_inclusion_frequencies",
    "plot_layer_norms",
    "plot_loss_curve",
    "plot_norm_heatmap",
    "plot_policy",
]

_METHOD_ORDER = ("lora", "ft", "lisa")


def _figure(width: float, height: float, ncols: int = 1):
    """A Figure on an Agg canvas with ncols axes, outside pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _save(figure, path: str | os.PathLike | None):
    if path is not None:
        # Through the one atomic writer: a crash mid-save never leaves a half-written PNG.
        buffer = io.BytesIO()
        figure.savefig(buffer, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
        atomic_write_bytes(path, buffer.getvalue())
    return figure


def _layer_label(group: str, block: Any) -> str | None:
    """Figure-2 x labels: E, 0..N-1, H (extras are not part of the paper's layout)."""
    if group == "embed":
        return "E"
    if group == "head":
        return "H"
    if (
        block is not pd.NA
        and block is not None
        and not (isinstance(block, float) and np.isnan(block))
    ):
        return str(int(block))
    return None


def _select(table: pd.DataFrame, kind: str, reduce: str) -> pd.DataFrame:
    frame = table[(table["kind"] == kind) & (table["reduce"] == reduce)]
    if frame.empty:
        raise ValueError(
            f"no rows with kind={kind!r} and reduce={reduce!r}; the table has kinds "
            f"{sorted(table['kind'].unique())} and reductions {sorted(table['reduce'].unique())}"
        )
    return frame


def _methods(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["method"]))
    return sorted(present, key=lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER else 99, m))


def plot_layer_norms(
    data: pd.DataFrame,
    path: str | os.PathLike | None = None,
    *,
    kind: str = "weight",
    reduce: str = "l2",
):
    """The paper's Figure 2: per-layer mean norm w^l, methods side by side, log y axis.

    Args:
        data: a norms table or a ``mean_norms`` table (one or more methods).
        path: where to save (format from the suffix, e.g. .png).
        kind, reduce: which recorded norm to plot.

    Returns:
        The matplotlib Figure. Non-positive means (e.g. delta of frozen layers) cannot sit on a
        log axis and are left out.
    """
    import seaborn as sns

    means = data if "mean_norm" in data.columns else mean_norms(data)
    frame = _select(means, kind, reduce).copy()
    frame["layer"] = [
        _layer_label(g, b) for g, b in zip(frame["group"], frame["block_index"], strict=True)
    ]
    frame = frame[frame["layer"].notna() & (frame["mean_norm"] > 0)]
    blocks = sorted({int(b) for b in frame["block_index"].dropna()})
    order = [x for x in ["E", *map(str, blocks), "H"] if x in set(frame["layer"])]
    methods = _methods(frame)
    figure, (axis,) = _figure(
        min(14.0, max(6.0, 0.16 * len(order) * max(1, len(methods)) + 2)), 4.0
    )
    sns.barplot(
        data=frame,
        x="layer",
        y="mean_norm",
        hue="method",
        order=order,
        hue_order=methods,
        ax=axis,
        errorbar=None,
    )
    axis.set_yscale("log")
    axis.set_xlabel("layer (E = embedding, 0..N-1 = blocks, H = head)")
    axis.set_ylabel(f"mean {kind} norm ({reduce})")
    axis.set_title(f"Per-layer mean {kind} norm over training steps")
    return _save(figure, path)


def plot_norm_heatmap(
    table: pd.DataFrame,
    path: str | os.PathLike | None = None,
    *,
    kind: str = "weight",
    reduce: str = "l2",
    relative: bool = False,
):
    """Heatmap of the norm over steps (rows) x layers (columns), one panel per method.

    Args:
        table: a tidy norms table.
        path: where to save.
        kind, reduce: which recorded norm to show.
        relative: show norm_t / norm_first - 1 per layer (how far each layer moved) instead
            of the raw norm on a log colour scale.

    Returns:
        The matplotlib Figure.
    """
    import seaborn as sns
    from matplotlib.colors import LogNorm

    frame = _select(table, kind, reduce).copy()
    frame["layer"] = [
        _layer_label(g, b) or str(g)
        for g, b in zip(frame["group"], frame["block_index"], strict=True)
    ]
    methods = _methods(frame)
    figure, axes = _figure(6.0 * len(methods), 4.5, ncols=len(methods))
    for axis, method in zip(axes, methods, strict=True):
        part = frame[frame["method"] == method]
        wide = part.pivot_table(
            index="step", columns="layer", values="norm", aggfunc="mean", sort=False
        )
        blocks = sorted(int(c) for c in wide.columns if c.isdigit())
        order = [c for c in ["E", *map(str, blocks), "H"] if c in wide.columns]
        order += [c for c in wide.columns if c not in order]
        wide = wide[order].sort_index()
        if relative:
            wide = wide / wide.iloc[0] - 1.0
            sns.heatmap(
                wide, ax=axis, cmap="vlag", center=0.0, cbar_kws={"label": "norm / first - 1"}
            )
        else:
            positive = wide.where(wide > 0)
            low, high = np.nanmin(positive.to_numpy()), np.nanmax(positive.to_numpy())
            sns.heatmap(
                positive,
                ax=axis,
                cmap="viridis",
                norm=LogNorm(vmin=low, vmax=high) if high > low else None,
                cbar_kws={"label": f"{kind} norm ({reduce})"},
            )
        axis.set_title(f"{method}: {kind} norm per step")
        axis.set_xlabel("layer")
        axis.set_ylabel("step")
    return _save(figure, path)


def _target_probabilities(source: Any) -> tuple[np.ndarray, float]:
    """(pi, gamma) of a SamplingPolicy (attribute) or any lisa Sampler (method)."""
    pi = source.inclusion_probabilities
    pi = np.asarray(pi() if callable(pi) else pi, dtype=np.float64)
    # Designs without a fixed size (bernoulli) draw sum(pi) blocks on average.
    gamma = getattr(source, "gamma", None)
    return pi, float(pi.sum() if gamma is None else gamma)


def plot_policy(policy, path: str | os.PathLike | None = None):
    """Bar chart of a policy's inclusion probabilities against uniform gamma / N.

    Args:
        policy: a SamplingPolicy, or any sampler (its ``inclusion_probabilities()``).
        path: where to save.

    Returns:
        The matplotlib Figure.
    """
    import seaborn as sns

    pi, gamma = _target_probabilities(policy)
    frame = pd.DataFrame({"block": np.arange(pi.size).astype(str), "probability": pi})
    figure, (axis,) = _figure(max(6.0, 0.22 * pi.size + 2), 4.0)
    sns.barplot(data=frame, x="block", y="probability", ax=axis, color="tab:blue")
    uniform = gamma / pi.size
    axis.axhline(uniform, color="tab:red", linestyle="--", label=f"uniform gamma/N = {uniform:.3f}")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("block")
    axis.set_ylabel("inclusion probability")
    axis.set_title(f"Sampling policy (gamma = {gamma:g} of {pi.size} blocks)")
    axis.legend()
    return _save(figure, path)


def _history_rows(history: Any) -> list[tuple[int, tuple[int, ...]]]:
    """Normalise a history of active sets to [(step, blocks)]."""
    if isinstance(history, pd.DataFrame):
        if {"step", "block"} <= set(history.columns):  # tidy: one row per active block
            return [(int(s), tuple(int(b) for b in g["block"])) for s, g in history.groupby("step")]
        column = "active_blocks" if "active_blocks" in history.columns else "blocks"
        if {"step", column} <= set(history.columns):
            rows = []
            for step, blocks in zip(history["step"], history[column], strict=True):
                if isinstance(blocks, str):
                    blocks = [
                        int(b)
                        for b in blocks.replace("[", " ")
                        .replace("]", " ")
                        .replace(",", " ")
                        .split()
                    ]
                rows.append((int(step), tuple(int(b) for b in blocks)))
            return rows
        raise ValueError(
            "history DataFrame needs columns (step, block) or (step, active_blocks); "
            f"got {list(history.columns)}"
        )
    if isinstance(history, dict):
        history = history.get("history", history.get("active_sets"))
        if history is None:
            raise ValueError("history dict needs a 'history' list of [step, blocks]")
    rows = []
    for entry in history:
        if isinstance(entry, dict):
            rows.append(
                (
                    int(entry["step"]),
                    tuple(int(b) for b in entry.get("active_blocks", entry.get("blocks", ()))),
                )
            )
        else:
            step, blocks = entry
            rows.append((int(step), tuple(int(b) for b in blocks)))
    return rows


def inclusion_frequencies(history: Any, num_blocks: int) -> pd.DataFrame:
    """Realised inclusion frequency of each block over the draws of a LISA run.

    Args:
        history: active sets as a list of (step, blocks), a list of {"step", "active_blocks"}
            dicts, {"history": [...]}, or a DataFrame with (step, block) or (step, active_blocks).
            One entry per draw (period).
        num_blocks: N.

    Returns:
        DataFrame with block, count, draws, frequency, and a 95% Clopper-Pearson interval
        (low, high) for the inclusion probability.
    """
    from scipy import stats

    rows = _history_rows(history)
    if not rows:
        raise ValueError("history is empty: no draws to count")
    counts = np.zeros(num_blocks, dtype=np.int64)
    for _, blocks in rows:
        for block in blocks:
            if not 0 <= block < num_blocks:
                raise ValueError(f"history has block {block}, outside 0..{num_blocks - 1}")
            counts[block] += 1
    draws = len(rows)
    intervals = [stats.binomtest(int(k), draws).proportion_ci(0.95) for k in counts]
    return pd.DataFrame(
        {
            "block": np.arange(num_blocks),
            "count": counts,
            "draws": draws,
            "frequency": counts / draws,
            "low": [ci.low for ci in intervals],
            "high": [ci.high for ci in intervals],
        }
    )


def plot_inclusion_frequencies(
    history: Any | Iterable[tuple[int, Sequence[int]]],
    policy,
    path: str | os.PathLike | None = None,
):
    """Realised inclusion frequencies of a LISA run (bars, 95% intervals) against its policy.

    Args:
        history: the run's active sets (see ``inclusion_frequencies``).
        policy: the SamplingPolicy, or the sampler, the run drew from.
        path: where to save.

    Returns:
        The matplotlib Figure. With enough draws each bar's interval covers the policy's
        marker for about 95% of the blocks.
    """
    import seaborn as sns

    pi, _ = _target_probabilities(policy)
    frame = inclusion_frequencies(history, pi.size)
    frame["label"] = frame["block"].astype(str)
    figure, (axis,) = _figure(max(6.0, 0.22 * pi.size + 2), 4.0)
    sns.barplot(data=frame, x="label", y="frequency", ax=axis, color="tab:blue", label="realised")
    positions = np.arange(pi.size)
    axis.errorbar(
        positions,
        frame["frequency"],
        yerr=[frame["frequency"] - frame["low"], frame["high"] - frame["frequency"]],
        fmt="none",
        ecolor="black",
        capsize=2,
        label="95% interval",
    )
    axis.scatter(positions, pi, color="tab:red", marker="D", zorder=3, label="policy pi")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("block")
    axis.set_ylabel("inclusion frequency")
    axis.set_title(f"Realised inclusion over {int(frame['draws'].iloc[0])} draws vs policy")
    axis.legend()
    return _save(figure, path)


def plot_loss_curve(
    history: Any, path: str | os.PathLike | None = None, *, title: str | None = None
):
    """Training loss against optimizer step, one line per method when there are several.

    Args:
        history: a trainer log history (``trainer.state.log_history``: a list of dicts) or a
            DataFrame with columns ``step`` and ``loss`` and optionally ``method``; rows without
            a loss (evaluation or summary rows) are ignored.
        path: where to save the figure (the suffix picks the format), or None.
        title: figure title; defaults to "Training loss".

    Returns:
        The matplotlib Figure.

    Example:
        >>> figure = plot_loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
        >>> figure.axes[0].get_xlabel()
        'optimizer step'
    """
    import seaborn as sns

    table = history if isinstance(history, pd.DataFrame) else pd.DataFrame(list(history))
    if "loss" not in table.columns or "step" not in table.columns:
        raise ValueError(
            f"history needs 'step' and 'loss' columns, got {list(table.columns)}; pass "
            "trainer.state.log_history with logging_steps >= 1"
        )
    table = table.dropna(subset=["loss"])
    if table.empty:
        raise ValueError("history has no logged training loss to plot")
    figure, (axes,) = _figure(6.4, 4.0)
    sns.lineplot(
        data=table,
        x="step",
        y="loss",
        hue="method" if "method" in table.columns else None,
        ax=axes,
        marker="." if len(table) <= 60 else None,
    )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (response tokens)")
    axes.set_title(title or "Training loss")
    axes.grid(alpha=0.3)
    return _save(figure, path)
