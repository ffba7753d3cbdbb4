"""Summary statistics over seeds: mean, standard deviation, t intervals, paired differences.

With n seeds and values x_1..x_n: mean m, sample standard deviation s (ddof 1), and the 95%
Student-t interval m +- t_{0.975, n-1} * s / sqrt(n). A paired difference to a reference takes
d_i = x_i - r_i over the seeds both have (same seed: same data order, same start) and reports
the same three numbers for d; an interval that excludes 0 is a difference larger than the seed
spread explains (at that confidence), one that contains 0 is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["mean_interval", "paired_difference"]


def mean_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Mean, standard deviation (ddof 1) and the Student-t interval of the mean.

    Args:
        values: one value per seed (NaNs are dropped first).
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``{"n", "mean", "std", "low", "high"}``; std and the interval are NaN below two values.

    Example:
        >>> {k: round(v, 4) for k, v in mean_interval([1.0, 2.0, 3.0]).items()}
        {'n': 3, 'mean': 2.0, 'std': 1.0, 'low': -0.4841, 'high': 4.4841}
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1")
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean = float(array.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def paired_difference(
    values: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> dict[str, float]:
    """``mean_interval`` of values[seed] - reference[seed] over the seeds both have.

    Args:
        values, reference: seed -> value (NaN values are left out of the pairs).
        confidence: coverage of the interval.

    Returns:
        ``{"n", "mean", "std", "low", "high"}`` of the differences.

    Example:
        >>> paired_difference({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.5, 1: 1.5, 2: 3.5})["mean"]
        0.5
    """
    seeds = sorted(
        seed
        for seed in set(values) & set(reference)
        if not (math.isnan(values[seed]) or math.isnan(reference[seed]))
    )
    differences = [values[seed] - reference[seed] for seed in seeds]
    return mean_interval(differences, confidence)
