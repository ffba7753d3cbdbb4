"""From scores to inclusion probabilities, and the randomised systematic design that meets them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lisa.samplers.base import (
    _GRID,
    _as_float,
    _check_gamma,
    _check_generator,
    _check_nonnegative_vector,
    _check_not_all_zero,
    _check_probability_vector,
    _fixed_size_gamma,
)

__all__ = ["inclusion_probabilities_from_scores", "systematic_sample"]

def inclusion_probabilities_from_scores(
    scores: Sequence[float] | np.ndarray,
    gamma: int,
    *,
    temperature: float = 1.0,
    floor: float = 0.0,
) -> np.ndarray:
    """Turns non-negative block scores into inclusion probabilities that sum to gamma.

    pi_l = clip(c * s_l ** temperature, floor, 1), with the one c > 0 that makes sum(pi) = gamma.
    This is "scale to sum gamma, cap at 1 and hand the excess to the uncapped blocks until none
    exceeds 1", with a lower bound: every block keeps pi_l >= floor (zero-score blocks get exactly
    floor). Multiplying all scores by a constant leaves pi unchanged; a higher score never gets a
    lower pi; blocks with score 0 get pi = 0 when floor = 0.

    Args:
        scores: one score per block, finite and >= 0, not all zero (e.g. w_LoRA / w_FT). A
            positive score always keeps pi > 0 (ratios to the largest score below 1e-250 count
            as 1e-250).
        gamma: blocks drawn per period, 0 <= gamma <= len(scores).
        temperature: exponent applied to the scores, >= 0 (0 treats every positive score alike,
            1 keeps them, > 1 sharpens the contrast).
        floor: the least inclusion probability of every block, 0 <= floor <= gamma / N.

    Returns:
        float64 array of shape (N,) in [0, 1] with sum gamma (to about 1e-12).

    Raises:
        ValueError: bad scores, gamma, temperature or floor, or fewer blocks able to train than
            gamma (too few positive scores for the floor to make up the rest).

    Example:
        >>> inclusion_probabilities_from_scores([8.0, 1.0, 1.0, 0.0], gamma=2).round(3).tolist()
        [1.0, 0.5, 0.5, 0.0]
    """
    s = _check_nonnegative_vector(scores, None, "scores")
    _check_not_all_zero(s, "scores")
    num_blocks = s.size
    gamma = _check_gamma(gamma, num_blocks)
    temperature_value = _as_float(temperature)
    if not math.isfinite(temperature_value) or temperature_value < 0:
        raise ValueError(
            f"temperature={temperature!r} must be finite and >= 0 (the score exponent)"
        )
    floor_value = _as_float(floor)
    if not math.isfinite(floor_value) or floor_value < 0:
        raise ValueError(f"floor={floor!r} must be finite and >= 0 (the least pi of any block)")
    if floor_value * num_blocks > gamma + 1e-12:
        raise ValueError(
            f"floor={floor!r} is infeasible: {num_blocks} blocks each with pi >= floor need "
            f"gamma >= {floor_value * num_blocks:g}, got gamma={gamma}; use floor <= gamma / N = "
            f"{gamma / num_blocks:g}"
        )
    if gamma == 0:
        return np.zeros(num_blocks)

    # (s / max s) ** temperature, in logs so that neither the ratio nor the power under- or
    # overflows: a positive score must stay positive. Ratios below 1e-250 carry no meaning and
    # 1 / w would overflow the breakpoints below, so they count as 1e-250.
    positive = s > 0
    log_ratio = np.log(s[positive]) - np.log(s.max())
    positive_weights = np.exp(np.maximum(temperature_value * log_ratio, math.log(1e-250)))
    num_zero = num_blocks - positive_weights.size

    most = positive_weights.size + num_zero * floor_value
    if most < gamma - 1e-9:
        raise ValueError(
            f"only {positive_weights.size} of {num_blocks} blocks have a positive score and the "
            f"floor={floor_value:g} adds {num_zero * floor_value:g} more, which cannot fill "
            f"gamma={gamma}; lower gamma or raise floor"
        )

    def total(c: np.ndarray) -> np.ndarray:  # sum(pi) as a function of the scale c, vectorised
        clipped = np.clip(c[:, None] * positive_weights[None, :], floor_value, 1.0)
        return clipped.sum(axis=1) + num_zero * floor_value

    # sum(pi)(c) is continuous, non-decreasing and linear between the points where a block hits
    # the floor or the cap, so one linear interpolation on the right segment solves it exactly.
    breakpoints = np.unique(
        np.concatenate([floor_value / positive_weights, 1.0 / positive_weights])
    )
    breakpoints = np.concatenate([[0.0], breakpoints[breakpoints > 0]])
    totals = total(breakpoints)
    reached = np.flatnonzero(totals >= gamma)
    if reached.size == 0:  # only within the tolerance above: every positive block at the cap
        scale = breakpoints[-1]
    else:
        k = int(reached[0])
        if k == 0 or totals[k] == totals[k - 1]:
            scale = breakpoints[k]
        else:
            left, right = breakpoints[k - 1], breakpoints[k]
            scale = left + (gamma - totals[k - 1]) * (right - left) / (totals[k] - totals[k - 1])

    pi = np.full(num_blocks, floor_value)
    pi[positive] = np.clip(scale * positive_weights, floor_value, 1.0)
    return pi


# --------------------------------------------------------------------------------------------
# the randomised systematic design


def _probability_grid(pi: np.ndarray, gamma: int) -> np.ndarray:
    """pi on the integer grid of 2**-40, adjusted so that it sums to exactly gamma units."""
    grid = np.rint(pi * _GRID).astype(np.int64)  # (N,)
    residual = gamma * _GRID - int(grid.sum())
    if residual:
        # Only strictly fractional blocks absorb the rounding: pi == 0 and pi == 1 stay exact.
        adjustable = np.flatnonzero((pi > 0) & (pi < 1))
        room = (_GRID - grid[adjustable]) if residual > 0 else grid[adjustable]
        sign = 1 if residual > 0 else -1
        remaining = abs(residual)
        for position in np.argsort(-room, kind="stable"):
            step = min(int(room[position]), remaining)
            grid[adjustable[position]] += sign * step
            remaining -= step
            if remaining == 0:
                break
        if remaining:
            raise ValueError(
                f"inclusion probabilities sum to {float(pi.sum())!r} and cannot be rounded to "
                f"gamma={gamma} blocks; rescale them with inclusion_probabilities_from_scores"
            )
    grid.flags.writeable = False
    return grid


def _systematic_draw(grid: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """One draw of the randomised systematic design over integer interval lengths ``grid``."""
    order = rng.permutation(grid.size)  # (N,) random order: randomises which blocks pair up
    lengths = grid[order]
    ends = np.cumsum(lengths)  # (N,) int64; ends[-1] == gamma * _GRID exactly
    starts = ends - lengths
    start = int(rng.integers(0, _GRID))  # the points are start + j * _GRID, j = 0 .. gamma-1
    # Points below x: ceil((x - start) / _GRID), never negative. An interval of length
    # <= _GRID holds at most one point, and the gamma points fall in gamma distinct intervals.
    below_end = np.maximum(-((start - ends) // _GRID), 0)
    below_start = np.maximum(-((start - starts) // _GRID), 0)
    chosen = order[below_end > below_start]
    return tuple(sorted(int(i) for i in chosen))


def systematic_sample(
    inclusion_probabilities: Sequence[float] | np.ndarray, rng: np.random.Generator
) -> tuple[int, ...]:
    """Draws exactly gamma = sum(pi) distinct blocks, block l with probability exactly pi_l.

    Randomised systematic sampling: shuffle the blocks, lay the pi_l end to end on [0, gamma),
    draw u ~ U[0, 1) and take the blocks whose interval holds one of u, u + 1, ..., u + gamma - 1.
    An interval of length pi_l <= 1 holds a point with probability pi_l. The arithmetic is
    integer (pi rounded to 2**-40), so pi == 1 blocks are always taken and pi == 0 never.

    Args:
        inclusion_probabilities: shape (N,), each in [0, 1], summing to a whole number gamma
            (within 1e-6 per block).
        rng: the generator to draw from.

    Returns:
        Sorted tuple of gamma distinct block indices.

    Example:
        >>> systematic_sample([1.0, 0.5, 0.5, 0.0], np.random.default_rng(0))[0]
        0
    """
    _check_generator(rng)
    pi = _check_probability_vector(inclusion_probabilities, None, "inclusion_probabilities")
    gamma = _fixed_size_gamma(pi, "inclusion_probabilities")
    if gamma == 0:
        return ()
    return _systematic_draw(_probability_grid(pi, gamma), rng)
