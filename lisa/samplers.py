"""Block samplers: which transformer blocks train in a LISA period (pure numpy, explicit RNG).

A sampler draws a sorted tuple of unique block indices from an explicit ``np.random.Generator``
and states the exact probability that each block is in a draw (``inclusion_probabilities()``).
Built-ins live in a name registry that refuses duplicates and that users extend::

    uniform    gamma of N blocks, every subset of size gamma equally likely (pi_l = gamma / N)
    weighted   exactly gamma blocks with target inclusion probabilities pi (systematic design)
    fixed      always the same blocks (an empty set trains only embeddings and head)
    bernoulli  block l on with probability p_l, independently (the draw size varies)
    cyclic     gamma blocks at a time through ascending, descending or reshuffled passes

See docs/samplers.md for the maths and for writing your own sampler.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BernoulliSampler",
    "CyclicSampler",
    "FixedSampler",
    "Sampler",
    "StatefulSampler",
    "UniformSampler",
    "WeightedSampler",
    "available_samplers",
    "inclusion_probabilities_from_scores",
    "make_sampler",
    "register_sampler",
    "systematic_sample",
]

# A fixed-size design needs sum(pi) to be a whole number of blocks; pi read back from a JSON
# policy or typed by hand (three times 0.333333) is off by rounding, which we accept up to this
# much per block.
SUM_TOLERANCE = 1e-6

# The systematic design runs on an integer grid of 2**-40: integer arithmetic makes "exactly
# gamma distinct blocks, pi == 1 always, pi == 0 never" hold with no floating-point boundary
# cases, at a resolution (about 1e-12) far below any statistical test.
_GRID = 1 << 40

CyclicOrder = Literal["ascending", "descending", "random"]
CYCLIC_ORDERS: tuple[str, ...] = ("ascending", "descending", "random")


@runtime_checkable
class Sampler(Protocol):
    """Chooses the active blocks of one LISA period.

    ``sample`` returns sorted, unique indices in ``range(num_blocks)``; ``inclusion_probabilities``
    returns, for every block, the exact probability that it is in one draw (for cyclic designs:
    the share of draws over one full cycle that contain it).
    """

    num_blocks: int

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """One draw: sorted, unique block indices, using only ``rng`` (and the sampler's state)."""
        ...

    def inclusion_probabilities(self) -> np.ndarray:
        """Shape (num_blocks,): the exact probability that each block is in one draw."""
        ...


@runtime_checkable
class StatefulSampler(Sampler, Protocol):
    """A sampler whose draws depend on its own position; the state is a JSON-able dict."""

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position as a JSON-able dict."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position saved by ``state_dict()``."""
        ...


# --------------------------------------------------------------------------------------------
# validation helpers (every error names the field, the value and the fix)


def _check_num_blocks(num_blocks: Any) -> int:
    if isinstance(num_blocks, bool):
        raise ValueError(f"num_blocks={num_blocks!r} must be an int >= 1 (the model's block count)")
    try:
        value = operator.index(num_blocks)
    except TypeError:
        raise ValueError(
            f"num_blocks={num_blocks!r} must be an int >= 1 (the model's block count)"
        ) from None
    if value < 1:
        raise ValueError(
            f"num_blocks={value} must be >= 1: a model with no blocks has nothing to sample"
        )
    return value


def _check_gamma(gamma: Any, num_blocks: int) -> int:
    if isinstance(gamma, bool):
        raise ValueError(f"gamma={gamma!r} must be an int in [0, {num_blocks}]")
    try:
        value = operator.index(gamma)
    except TypeError:
        raise ValueError(
            f"gamma={gamma!r} must be an int in [0, {num_blocks}] (blocks active per period)"
        ) from None
    if value < 0:
        raise ValueError(f"gamma={value} is negative; use 0 to train only embeddings and head")
    if value > num_blocks:
        raise ValueError(
            f"gamma={value} is larger than the model's {num_blocks} blocks; use gamma <= {num_blocks}"
        )
    return value


def _check_generator(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng={rng!r} is not a numpy Generator; pass np.random.default_rng(seed) "
            "(samplers never use the global RNG)"
        )


def _check_probability_vector(values: Any, num_blocks: int | None, name: str) -> np.ndarray:
    """Checks a vector of per-block probabilities in [0, 1] and returns it as float64."""
    array = _check_nonnegative_vector(values, num_blocks, name)
    above = np.flatnonzero(array > 1.0)
    if above.size:
        i = int(above[0])
        raise ValueError(f"{name}[{i}]={float(array[i])!r} is above 1; probabilities lie in [0, 1]")
    return array


def _check_nonnegative_vector(values: Any, num_blocks: int | None, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={values!r} is not a vector of numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}; pass one number per block (1-D)")
    if num_blocks is not None and array.size != num_blocks:
        raise ValueError(
            f"{name} has length {array.size} but the model has num_blocks={num_blocks}; "
            "pass one value per block"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass one value per block")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}]={float(array[i])!r} is not finite (NaN or inf); pass finite values"
        )
    negative = np.flatnonzero(array < 0)
    if negative.size:
        i = int(negative[0])
        raise ValueError(f"{name}[{i}]={float(array[i])!r} is negative; values must be >= 0")
    return array


def _as_float(value: Any) -> float:
    """float(value), or NaN for something that is not a number (the caller names the field)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_not_all_zero(array: np.ndarray, name: str) -> None:
    if not np.any(array > 0):
        raise ValueError(
            f"{name} are all zero, so no block could ever train; to train only embeddings and "
            "head use make_sampler('fixed', num_blocks, blocks=())"
        )


def _fixed_size_gamma(pi: np.ndarray, name: str) -> int:
    """The block count of a fixed-size design: sum(pi), which must be a whole number."""
    total = float(pi.sum())
    gamma = round(total)
    if abs(total - gamma) > SUM_TOLERANCE * pi.size:
        raise ValueError(
            f"{name} sum to {total!r}, not a whole number of blocks: a fixed-size design draws "
            f"exactly gamma = sum(pi) blocks; rescale them, e.g. "
            f"inclusion_probabilities_from_scores(pi, gamma={max(1, round(total))})"
        )
    return int(gamma)


# --------------------------------------------------------------------------------------------
# scores -> inclusion probabilities


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


# --------------------------------------------------------------------------------------------
# built-in samplers


@dataclass(frozen=True)
class UniformSampler:
    """gamma of num_blocks blocks without replacement, every subset equally likely.

    pi_l = gamma / N for every block. gamma = 0 draws nothing (only embeddings and head train).

    Example:
        >>> UniformSampler(num_blocks=6, gamma=2).sample(np.random.default_rng(0))
        (3, 4)
    """

    num_blocks: int
    gamma: int

    def __post_init__(self) -> None:
        num_blocks = _check_num_blocks(self.num_blocks)
        object.__setattr__(self, "num_blocks", num_blocks)
        object.__setattr__(self, "gamma", _check_gamma(self.gamma, num_blocks))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """gamma distinct blocks, a uniformly random subset."""
        _check_generator(rng)
        chosen = rng.choice(self.num_blocks, size=self.gamma, replace=False)
        return tuple(sorted(int(i) for i in chosen))

    def inclusion_probabilities(self) -> np.ndarray:
        """gamma / N for every block."""
        return np.full(self.num_blocks, self.gamma / self.num_blocks)


@dataclass(frozen=True)
class WeightedSampler:
    """Exactly gamma = sum(pi) blocks, block l with probability exactly pi_l (systematic design).

    Build it from inclusion probabilities, or from raw scores with ``from_scores``.

    Example:
        >>> sampler = WeightedSampler(num_blocks=4, probabilities=(1.0, 0.5, 0.5, 0.0))
        >>> sampler.gamma, sampler.sample(np.random.default_rng(0))[0]
        (2, 0)
    """

    num_blocks: int
    probabilities: tuple[float, ...]
    gamma: int = field(init=False)
    _grid: np.ndarray = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        num_blocks = _check_num_blocks(self.num_blocks)
        pi = _check_probability_vector(self.probabilities, num_blocks, "inclusion_probabilities")
        _check_not_all_zero(pi, "inclusion_probabilities")
        gamma = _fixed_size_gamma(pi, "inclusion_probabilities")
        object.__setattr__(self, "num_blocks", num_blocks)
        object.__setattr__(self, "probabilities", tuple(float(p) for p in pi))
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "_grid", _probability_grid(pi, gamma))

    @classmethod
    def from_scores(
        cls,
        scores: Sequence[float] | np.ndarray,
        gamma: int,
        *,
        temperature: float = 1.0,
        floor: float = 0.0,
    ) -> WeightedSampler:
        """Builds the sampler with pi = inclusion_probabilities_from_scores(scores, gamma, ...)."""
        pi = inclusion_probabilities_from_scores(
            scores, gamma, temperature=temperature, floor=floor
        )
        return cls(num_blocks=pi.size, probabilities=tuple(pi))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """gamma distinct blocks by the randomised systematic design."""
        _check_generator(rng)
        return _systematic_draw(self._grid, rng)

    def inclusion_probabilities(self) -> np.ndarray:
        """The target pi it was built with; draws realise it up to the rounding accepted then."""
        return np.array(self.probabilities)


@dataclass(frozen=True)
class FixedSampler:
    """Always the same blocks; ``blocks=()`` trains only embeddings and head.

    Example:
        >>> FixedSampler(num_blocks=6, blocks=(5, 0)).sample(np.random.default_rng(0))
        (0, 5)
    """

    num_blocks: int
    blocks: tuple[int, ...]
    gamma: int = field(init=False)

    def __post_init__(self) -> None:
        num_blocks = _check_num_blocks(self.num_blocks)
        try:
            blocks = [operator.index(b) for b in self.blocks]
        except TypeError:
            raise ValueError(
                f"blocks={self.blocks!r} must be a sequence of int block indices"
            ) from None
        for b in blocks:
            if not 0 <= b < num_blocks:
                raise ValueError(
                    f"blocks contains {b}, outside range(num_blocks={num_blocks}); "
                    f"valid indices are 0 .. {num_blocks - 1}"
                )
        duplicated = sorted({b for b in blocks if blocks.count(b) > 1})
        if duplicated:
            raise ValueError(f"blocks={tuple(blocks)} repeats {duplicated}; list each block once")
        object.__setattr__(self, "num_blocks", num_blocks)
        object.__setattr__(self, "blocks", tuple(sorted(blocks)))
        object.__setattr__(self, "gamma", len(blocks))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """The fixed blocks, every time (the generator is not used)."""
        _check_generator(rng)
        return self.blocks

    def inclusion_probabilities(self) -> np.ndarray:
        """1 for the fixed blocks, 0 elsewhere."""
        pi = np.zeros(self.num_blocks)
        pi[list(self.blocks)] = 1.0
        return pi


@dataclass(frozen=True)
class BernoulliSampler:
    """Block l on with probability p_l, independently: Algorithm 1 of the paper taken literally.

    The draw size varies (mean sum(p)); pi_l = p_l exactly.

    Example:
        >>> BernoulliSampler(num_blocks=3, probabilities=(1.0, 0.0, 1.0)).sample(
        ...     np.random.default_rng(0))
        (0, 2)
    """

    num_blocks: int
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        num_blocks = _check_num_blocks(self.num_blocks)
        p = _check_probability_vector(self.probabilities, num_blocks, "probabilities")
        _check_not_all_zero(p, "probabilities")
        object.__setattr__(self, "num_blocks", num_blocks)
        object.__setattr__(self, "probabilities", tuple(float(x) for x in p))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """Each block on independently with its probability."""
        _check_generator(rng)
        # rng.random() lies in [0, 1): p == 1 is always on, p == 0 never.
        on = rng.random(self.num_blocks) < np.asarray(self.probabilities)
        return tuple(int(i) for i in np.flatnonzero(on))

    def inclusion_probabilities(self) -> np.ndarray:
        """The per-block probabilities p."""
        return np.array(self.probabilities)


class CyclicSampler:
    """gamma blocks at a time through passes over all blocks (as BAdam orders its blocks).

    A pass visits every block once, in ascending or descending index order, or in a fresh random
    order per pass (``order="random"``). When gamma does not divide N, a draw that reaches the end
    of a pass takes the blocks left in it plus the first blocks of the next pass that it does not
    already hold; those are moved to the front of the next pass, so every pass still visits each
    block exactly once and every draw has exactly gamma distinct blocks. For ascending and
    descending orders this is plain wrap-around: N=5, gamma=2 gives (0, 1), (2, 3), (0, 4),
    (1, 2), (3, 4), ...

    Over one full cycle of lcm(N, gamma) / gamma draws each block is in lcm(N, gamma) / N of them,
    so ``inclusion_probabilities()`` is gamma / N for every block.

    Stateful: ``state_dict()`` holds the current pass order and the position in it (JSON-able);
    the random order draws each new pass from the generator given to ``sample``.

    Example:
        >>> sampler = CyclicSampler(num_blocks=5, gamma=2)
        >>> rng = np.random.default_rng(0)
        >>> [sampler.sample(rng) for _ in range(3)]
        [(0, 1), (2, 3), (0, 4)]
    """

    __slots__ = ("_gamma", "_num_blocks", "_order", "_pass_order", "_position")

    def __init__(self, num_blocks: int, gamma: int, order: CyclicOrder = "ascending") -> None:
        self._num_blocks = _check_num_blocks(num_blocks)
        self._gamma = _check_gamma(gamma, self._num_blocks)
        if order not in CYCLIC_ORDERS:
            raise ValueError(f"order={order!r} is not one of {CYCLIC_ORDERS}")
        self._order: str = order
        self._pass_order: list[int] = []  # the current pass; empty until the first draw
        self._position = 0  # how many blocks of the current pass were drawn

    @property
    def num_blocks(self) -> int:
        """N, the model's block count."""
        return self._num_blocks

    @property
    def gamma(self) -> int:
        """Blocks per draw."""
        return self._gamma

    @property
    def order(self) -> str:
        """ "ascending", "descending" or "random"."""
        return self._order

    def __repr__(self) -> str:
        return (
            f"CyclicSampler(num_blocks={self._num_blocks}, gamma={self._gamma}, "
            f"order={self._order!r})"
        )

    def _next_pass(self, rng: np.random.Generator, carried: list[int], needed: int) -> list[int]:
        if self._order == "ascending":
            fresh = list(range(self._num_blocks))
        elif self._order == "descending":
            fresh = list(range(self._num_blocks - 1, -1, -1))
        else:
            fresh = [int(i) for i in rng.permutation(self._num_blocks)]
        carried_set = set(carried)
        front = [b for b in fresh if b not in carried_set][:needed]
        front_set = set(front)
        return front + [b for b in fresh if b not in front_set]

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """The next gamma blocks of the current pass (wrapping into a new pass)."""
        _check_generator(rng)
        if self._gamma == 0:
            return ()
        taken = self._pass_order[self._position : self._position + self._gamma]
        self._position += len(taken)
        needed = self._gamma - len(taken)
        if needed:
            self._pass_order = self._next_pass(rng, taken, needed)
            taken = taken + self._pass_order[:needed]
            self._position = needed
        return tuple(sorted(taken))

    def inclusion_probabilities(self) -> np.ndarray:
        """gamma / N: each block's share of the draws over one full cycle."""
        return np.full(self._num_blocks, self._gamma / self._num_blocks)

    def state_dict(self) -> dict[str, Any]:
        """The configuration, the current pass order and the position in it (JSON-able)."""
        return {
            "num_blocks": self._num_blocks,
            "gamma": self._gamma,
            "order": self._order,
            "permutation": list(self._pass_order),
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from ``state_dict()``; refuses one made for another configuration."""
        if not isinstance(state, dict):
            raise ValueError(f"state={state!r} must be the dict returned by state_dict()")
        for key, mine in (
            ("num_blocks", self._num_blocks),
            ("gamma", self._gamma),
            ("order", self._order),
        ):
            if state.get(key) != mine:
                raise ValueError(
                    f"state {key}={state.get(key)!r} does not match this sampler's {key}={mine!r}; "
                    "load a state saved by a sampler with the same configuration"
                )
        permutation = [int(b) for b in state.get("permutation", [])]
        if permutation and sorted(permutation) != list(range(self._num_blocks)):
            raise ValueError(
                f"state permutation={permutation} is not a permutation of range({self._num_blocks})"
            )
        position = state.get("position")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"state position={position!r} must be an int")
        if not 0 <= position <= len(permutation):
            raise ValueError(
                f"state position={position} is outside [0, {len(permutation)}] for its permutation"
            )
        self._pass_order = permutation
        self._position = position


# --------------------------------------------------------------------------------------------
# the registry

_REGISTRY: dict[str, Callable[..., Sampler]] = {}


def register_sampler(name: str, factory: Callable[..., Sampler]) -> None:
    """Adds a sampler under ``name``; ``make_sampler(name, N, **kw)`` then calls factory(N, **kw).

    Args:
        name: a new, non-empty name (duplicates are refused, built-ins included).
        factory: callable(num_blocks, **kwargs) returning an object that satisfies ``Sampler``.

    Raises:
        ValueError: the name is empty or already registered, or factory is not callable.

    Example:
        >>> register_sampler("uniform", UniformSampler)
        Traceback (most recent call last):
        ...
        ValueError: sampler name 'uniform' is already registered; pick another name
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty string")
    if not callable(factory):
        raise ValueError(f"factory={factory!r} for sampler {name!r} is not callable")
    if name in _REGISTRY:
        raise ValueError(f"sampler name {name!r} is already registered; pick another name")
    _REGISTRY[name] = factory


def available_samplers() -> tuple[str, ...]:
    """The registered sampler names, built-ins first, in registration order."""
    return tuple(_REGISTRY)


def make_sampler(name: str, num_blocks: int, **kwargs: Any) -> Sampler:
    """Builds the sampler registered as ``name`` for a model with ``num_blocks`` blocks.

    Keyword names of the built-ins::

        make_sampler("uniform", N, gamma=g)
        make_sampler("weighted", N, inclusion_probabilities=pi)
        make_sampler("weighted", N, scores=s, gamma=g, temperature=1.0, floor=0.0)
        make_sampler("fixed", N, blocks=(...))
        make_sampler("bernoulli", N, probabilities=p)
        make_sampler("cyclic", N, gamma=g, order="ascending" | "descending" | "random")

    Raises:
        ValueError: unknown name (the message lists the known ones) or invalid settings.
        TypeError: the factory returned something that is not a ``Sampler``.

    Example:
        >>> make_sampler("uniform", 30, gamma=2).inclusion_probabilities()[:3].round(4).tolist()
        [0.0667, 0.0667, 0.0667]
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown sampler name={name!r}; known samplers: {', '.join(available_samplers())} "
            "(add your own with register_sampler)"
        )
    num_blocks = _check_num_blocks(num_blocks)
    sampler = _REGISTRY[name](num_blocks, **kwargs)
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"the factory of sampler {name!r} returned {sampler!r}, which lacks num_blocks, "
            "sample(rng) or inclusion_probabilities()"
        )
    if sampler.num_blocks != num_blocks:
        raise TypeError(
            f"the factory of sampler {name!r} returned num_blocks={sampler.num_blocks}, "
            f"asked for {num_blocks}"
        )
    return sampler


def _make_weighted(
    num_blocks: int,
    *,
    inclusion_probabilities: Sequence[float] | np.ndarray | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    gamma: int | None = None,
    temperature: float = 1.0,
    floor: float = 0.0,
) -> WeightedSampler:
    if (inclusion_probabilities is None) == (scores is None):
        raise ValueError(
            "weighted sampler: pass exactly one of inclusion_probabilities=pi or "
            "scores=s (with gamma=g)"
        )
    if inclusion_probabilities is not None:
        if temperature != 1.0 or floor != 0.0:
            raise ValueError(
                f"temperature={temperature!r} and floor={floor!r} apply to scores only; "
                "pass scores=... or drop them"
            )
        sampler = WeightedSampler(num_blocks, inclusion_probabilities)
        if gamma is not None and _check_gamma(gamma, num_blocks) != sampler.gamma:
            raise ValueError(
                f"gamma={gamma} disagrees with sum(inclusion_probabilities)={sampler.gamma}; "
                "drop gamma or rescale the probabilities"
            )
        return sampler
    if gamma is None:
        raise ValueError("weighted sampler from scores needs gamma=g (blocks per period)")
    _check_nonnegative_vector(scores, num_blocks, "scores")
    return WeightedSampler.from_scores(scores, gamma, temperature=temperature, floor=floor)


def _make_fixed(num_blocks: int, *, blocks: Sequence[int]) -> FixedSampler:
    return FixedSampler(num_blocks, blocks)


def _make_bernoulli(
    num_blocks: int, *, probabilities: Sequence[float] | np.ndarray
) -> BernoulliSampler:
    return BernoulliSampler(num_blocks, probabilities)


def _make_uniform(num_blocks: int, *, gamma: int) -> UniformSampler:
    return UniformSampler(num_blocks, gamma)


def _make_cyclic(num_blocks: int, *, gamma: int, order: CyclicOrder = "ascending") -> CyclicSampler:
    return CyclicSampler(num_blocks, gamma, order)


register_sampler("uniform", _make_uniform)
register_sampler("weighted", _make_weighted)
register_sampler("fixed", _make_fixed)
register_sampler("bernoulli", _make_bernoulli)
register_sampler("cyclic", _make_cyclic)
