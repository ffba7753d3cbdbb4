"""The fixed-size and independent designs: uniform, weighted (exact pi), fixed and Bernoulli."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lisa.samplers.base import (
    _check_gamma,
    _check_generator,
    _check_not_all_zero,
    _check_num_blocks,
    _check_probability_vector,
    _fixed_size_gamma,
)
from lisa.samplers.probabilities import (
    _probability_grid,
    _systematic_draw,
    inclusion_probabilities_from_scores,
)

__all__ = ["BernoulliSampler", "FixedSampler", "UniformSampler", "WeightedSampler"]

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

    def spec(self) -> tuple[str, dict]:
        """The registered name and keyword arguments that rebuild this sampler (JSON-able)."""
        return "uniform", {"gamma": self.gamma}


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

    def spec(self) -> tuple[str, dict]:
        """The registered name and keyword arguments that rebuild this sampler (JSON-able)."""
        return "weighted", {"inclusion_probabilities": list(self.probabilities)}


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

    def spec(self) -> tuple[str, dict]:
        """The registered name and keyword arguments that rebuild this sampler (JSON-able)."""
        return "fixed", {"blocks": list(self.blocks)}


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

    def spec(self) -> tuple[str, dict]:
        """The registered name and keyword arguments that rebuild this sampler (JSON-able)."""
        return "bernoulli", {"probabilities": list(self.probabilities)}
