"""The sampler registry: names to factories, duplicates refused, built-ins registered first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lisa.samplers.base import Sampler, _check_gamma, _check_nonnegative_vector, _check_num_blocks
from lisa.samplers.cyclic import CyclicOrder, CyclicSampler
from lisa.samplers.designs import BernoulliSampler, FixedSampler, UniformSampler, WeightedSampler

__all__ = ["available_samplers", "make_sampler", "register_sampler", "sampler_factory"]

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


def sampler_factory(name: str) -> Callable[..., Sampler]:
    """The factory registered as ``name`` (ValueError listing the known names otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown sampler name={name!r}; known samplers: {', '.join(available_samplers())} "
            "(add your own with register_sampler)"
        )
    return _REGISTRY[name]


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
    factory = sampler_factory(name)
    num_blocks = _check_num_blocks(num_blocks)
    sampler = factory(num_blocks, **kwargs)
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
