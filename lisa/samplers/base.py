"""The Sampler protocol and the checks every sampler shares (one error text per mistake)."""

from __future__ import annotations

import math
import operator
from typing import Any, Protocol, runtime_checkable

import numpy as np

# A fixed-size design needs sum(pi) to be a whole number of blocks; pi read back from a JSON
# policy or typed by hand (three times 0.333333) is off by rounding, which we accept up to this
# much per block.
SUM_TOLERANCE = 1e-6

# The systematic design runs on an integer grid of 2**-40: integer arithmetic makes "exactly
# gamma distinct blocks, pi == 1 always, pi == 0 never" hold with no floating-point boundary
# cases, at a resolution (about 1e-12) far below any statistical test.
_GRID = 1 << 40


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
