"""Skew of the per-layer mean norm profile: E and H against the median block, Gini over blocks.

The paper's statistic is the mean over recorded steps of each layer's norm,

    w^l = (1/T) * sum_t ||theta_t^l||,

and its observation is that under LoRA w^E and/or w^H dwarf the middle blocks while under FT
the profile is flat. ``skew_summary`` condenses a norms table into that comparison:

    embed_ratio = w^E / median_l w^l,   head_ratio = w^H / median_l w^l   (l over blocks)
    gini = sum_ij |w^i - w^j| / (2 n^2 mean(w))                           (over the n blocks)

with percentile bootstrap intervals from resampling the recorded steps (scipy.stats.bootstrap,
fixed seed). The steps of one run are a time series, not independent draws, so the intervals
describe how much the statistic depends on which steps were recorded, not run-to-run spread.
A tied model has no "head" group (the shared matrix belongs to "embed"): head_ratio is NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from lisa.validation import check_int

__all__ = ["ID_COLUMNS", "gini", "mean_norms", "side_by_side", "skew_summary"]

ID_COLUMNS: tuple[str, ...] = ("run", "method", "kind", "reduce")
_STATISTICS = ("embed_ratio", "head_ratio", "gini")


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when all equal, -> 1 when one dominates.

    G = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), computed from the sorted values as
    G = sum_i (2i - n - 1) x_(i) / (n sum x) for i = 1..n.

    Args:
        values: one value per block (non-negative, not all zero).

    Returns:
        G in [0, 1 - 1/n]; NaN for an empty input or an all-zero one.

    Example:
        >>> gini([1.0, 1.0, 1.0])
        0.0
        >>> round(gini([0.0, 0.0, 0.0, 1.0]), 2)
        0.75
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return float("nan")
    if x[0] < 0:
        raise ValueError(f"gini needs non-negative values, got minimum {x[0]}")
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * x.sum()))


def mean_norms(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's w^l: mean over recorded steps of each group's norm.

    Args:
        table: a tidy norms table (NormRecorder / load_norms).

    Returns:
        One row per (run, method, kind, reduce, group): columns run, method, kind, reduce,
        group, block_index, mean_norm, num_steps; groups in layer order (embed, blocks, head,
        extras).
    """
    keys = [*ID_COLUMNS, "group"]
    grouped = table.groupby(keys, sort=False, dropna=False)
    result = grouped.agg(
        block_index=("block_index", "first"),
        mean_norm=("norm", "mean"),
        num_steps=("step", "nunique"),
    ).reset_index()
    result["block_index"] = result["block_index"].astype("Int64")
    result["_order"] = [
        _group_order(g, b) for g, b in zip(result["group"], result["block_index"], strict=True)
    ]
    result = result.sort_values([*ID_COLUMNS, "_order"], kind="stable").drop(columns="_order")
    return result.reset_index(drop=True)


def _group_order(group: str, block: object) -> float:
    if group == "embed":
        return -1.0
    if block is not pd.NA and block is not None:
        return float(block)
    return 1e9 if group == "head" else 2e9


def _statistics(matrix: np.ndarray, columns: list[str]) -> np.ndarray:
    """embed_ratio, head_ratio, gini from a (steps, groups) matrix, via the mean over steps."""
    means = matrix.mean(axis=0)
    blocks = np.array([c.startswith("block.") for c in columns])
    block_means = means[blocks]
    median = np.median(block_means) if block_means.size else np.nan
    out = np.full(3, np.nan)
    if "embed" in columns and median > 0:
        out[0] = means[columns.index("embed")] / median
    if "head" in columns and median > 0:
        out[1] = means[columns.index("head")] / median
    if block_means.size:
        out[2] = gini(block_means)
    return out


def _bootstrap(matrix, columns, n_resamples, confidence_level, seed):
    return stats.bootstrap(
        (np.arange(matrix.shape[0]),),
        lambda idx: _statistics(matrix[idx.astype(int)], columns),
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def skew_summary(
    table: pd.DataFrame,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 999,
    seed: int = 0,
) -> pd.DataFrame:
    """Skew of each run's mean norm profile, with bootstrap intervals over steps.

    Args:
        table: a tidy norms table with one or more runs, methods, kinds and reductions.
        confidence_level: coverage of the percentile intervals.
        n_resamples: bootstrap resamples (steps drawn with replacement).
        seed: seeds scipy's bootstrap generator, so the intervals are reproducible.

    Returns:
        One row per (run, method, kind, reduce): num_steps, num_blocks, embed_norm, head_norm,
        median_block_norm, and for each of embed_ratio, head_ratio, gini the point value plus
        ``_low`` / ``_high`` interval ends (NaN with fewer than two steps or no such group).

    Example:
        >>> import tempfile
        >>> from diagnostics.recorder import NormRecorder, load_norms
        >>> from lisa_apps.models import load_model
        >>> model, _ = load_model("tiny-llama")
        >>> out = tempfile.mkdtemp()
        >>> recorder = NormRecorder(kinds=("weight",), method="ft", path=out)
        >>> for step in range(3):
        ...     rows = recorder.record(step, model)
        >>> csv_path = recorder.save()
        >>> summary = skew_summary(load_norms(csv_path))
        >>> summary[["method", "num_steps", "num_blocks", "embed_ratio"]].round(3)
          method  num_steps  num_blocks  embed_ratio
        0     ft          3           4        0.239
    """
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level={confidence_level!r} must lie strictly between 0 and 1")
    check_int("n_resamples", n_resamples)
    rows = []
    means = mean_norms(table)
    for keys, frame in table.groupby(list(ID_COLUMNS), sort=False):
        ordered = means.loc[
            (means[list(ID_COLUMNS)] == pd.Series(keys, index=ID_COLUMNS)).all(axis=1)
        ]
        columns = ordered["group"].tolist()
        wide = frame.pivot_table(index="step", columns="group", values="norm", aggfunc="mean")
        wide = wide.reindex(columns=columns).dropna(axis=0, how="any")
        matrix = wide.to_numpy(dtype=np.float64)  # (steps, groups)
        point = _statistics(matrix, columns)
        low = np.full(3, np.nan)
        high = np.full(3, np.nan)
        if matrix.shape[0] >= 2:
            with warnings.catch_warnings():
                # NaN statistics (no head in a tied model) make scipy warn on every resample.
                warnings.simplefilter("ignore", RuntimeWarning)
                result = _bootstrap(matrix, columns, n_resamples, confidence_level, seed)
            low = np.asarray(result.confidence_interval.low, dtype=np.float64)
            high = np.asarray(result.confidence_interval.high, dtype=np.float64)
        block_values = ordered.loc[ordered["group"].str.startswith("block."), "mean_norm"]
        group_mean = dict(zip(ordered["group"], ordered["mean_norm"], strict=True))
        row = dict(zip(ID_COLUMNS, keys, strict=True))
        row.update(
            num_steps=int(matrix.shape[0]),
            num_blocks=int(block_values.size),
            embed_norm=group_mean.get("embed", np.nan),
            head_norm=group_mean.get("head", np.nan),
            median_block_norm=float(np.median(block_values)) if block_values.size else np.nan,
        )
        for i, name in enumerate(_STATISTICS):
            row[name] = float(point[i])
            row[f"{name}_low"] = float(low[i])
            row[f"{name}_high"] = float(high[i])
        rows.append(row)
    return pd.DataFrame(rows)


def side_by_side(
    summary: pd.DataFrame,
    values: Sequence[str] = ("embed_ratio", "head_ratio", "gini"),
) -> pd.DataFrame:
    """Wide view of a skew summary: one row per statistic, one column per method (and run).

    Args:
        summary: the output of ``skew_summary``.
        values: the statistics to show; each gets a "low - high" interval column too.

    Returns:
        Index (kind, reduce, statistic), columns "<method>" and "<method> 95% CI" (run names
        are prefixed when the summary holds several runs of one method).
    """
    records = []
    multiple_runs = summary.groupby("method")["run"].nunique().max() > 1 if len(summary) else False
    for _, row in summary.iterrows():
        label = f"{row['run']}:{row['method']}" if multiple_runs else str(row["method"])
        for name in values:
            low, high = row.get(f"{name}_low", np.nan), row.get(f"{name}_high", np.nan)
            records.append(
                {
                    "kind": row["kind"],
                    "reduce": row["reduce"],
                    "statistic": name,
                    "column": label,
                    "value": row[name],
                    "interval": "" if np.isnan(low) else f"{low:.4g} - {high:.4g}",
                }
            )
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    index = ["kind", "reduce", "statistic"]
    value = frame.pivot_table(
        index=index, columns="column", values="value", aggfunc="first", sort=False, dropna=False
    )
    interval = frame.pivot_table(
        index=index, columns="column", values="interval", aggfunc="first", sort=False, dropna=False
    )
    interval.columns = [f"{c} CI" for c in interval.columns]
    wide = pd.concat([value, interval], axis=1)
    order = [c for label in value.columns for c in (label, f"{label} CI")]
    return wide[order]
