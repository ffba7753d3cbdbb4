"""The sampler a LisaConfig asks for, built for a model, and checks on what a sampler says and draws.

The engine trusts no sampler (docs/design.md section 3, rule 8): its stated inclusion
probabilities are checked when it is built (:func:`build_sampler`) and every draw is checked
before a block is switched (:func:`check_draw`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import numpy as np

from lisa.config import LisaConfig
from lisa.samplers import SUM_TOLERANCE, Sampler, make_sampler
from lisa.samplers.registry import sampler_factory
from lisa.validation import is_int

__all__ = ["build_sampler", "check_draw", "check_inclusion_probabilities"]


def build_sampler(config: LisaConfig, num_blocks: int) -> Sampler:
    """The sampler ``config`` asks for on a model of ``num_blocks`` blocks, checked.

    A named sampler is built with ``make_sampler(name, num_blocks, gamma=..., **options)``; an
    instance must be built for ``num_blocks``. Either way its stated inclusion probabilities
    must be one per block in [0, 1], summing to its gamma when it has one.

    Raises:
        ValueError: naming what is wrong and how to fix it.

    Example:
        >>> build_sampler(LisaConfig(gamma=2), 6)
        UniformSampler(num_blocks=6, gamma=2)
    """
    if isinstance(config.sampler, str):
        if config.gamma > num_blocks:
            raise ValueError(
                f"gamma={config.gamma} is larger than the model's {num_blocks} blocks; "
                f"use gamma <= {num_blocks}"
            )
        options = dict(config.sampler_options)
        if "gamma" not in options and _takes_gamma(sampler_factory(config.sampler)):
            options["gamma"] = config.gamma
        try:
            sampler = make_sampler(config.sampler, num_blocks, **options)
        except TypeError as error:
            raise ValueError(
                f"sampler={config.sampler!r} cannot be built from sampler_options "
                f"{sorted(config.sampler_options)} ({error}); pass the keyword arguments "
                f"it takes, e.g. make_sampler({config.sampler!r}, {num_blocks}, ...)"
            ) from error
        sampler_gamma = getattr(sampler, "gamma", None)
        if sampler_gamma is not None and sampler_gamma != config.gamma:
            raise ValueError(
                f"gamma={config.gamma} but sampler {config.sampler!r} with these options "
                f"draws {sampler_gamma} blocks; pass LisaConfig(gamma={sampler_gamma}, ...)"
            )
    else:
        sampler = config.sampler
        if sampler.num_blocks != num_blocks:
            raise ValueError(
                f"the sampler was built for num_blocks={sampler.num_blocks} but the model "
                f"has {num_blocks} blocks; build it with make_sampler(name, {num_blocks}, ...)"
            )
    check_inclusion_probabilities(sampler, num_blocks)
    return sampler


def _takes_gamma(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.name == "gamma" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


def check_inclusion_probabilities(sampler: Sampler, num_blocks: int) -> None:
    """Refuse a sampler whose stated pi is malformed or disagrees with its gamma."""
    name = type(sampler).__name__
    stated = getattr(sampler, "inclusion_probabilities", None)
    if not callable(stated):
        raise ValueError(
            f"{name} has no inclusion_probabilities(); a Sampler states the chance that each "
            "block is in a draw (see lisa.samplers.Sampler)"
        )
    pi = np.asarray(stated(), dtype=np.float64)
    if pi.shape != (num_blocks,):
        raise ValueError(
            f"{name}.inclusion_probabilities() has shape {pi.shape}; expected ({num_blocks},), "
            "one probability per block"
        )
    if not np.all(np.isfinite(pi)) or pi.min() < 0 or pi.max() > 1 + SUM_TOLERANCE:
        raise ValueError(
            f"{name}.inclusion_probabilities() must lie in [0, 1]; got min {pi.min():.6g}, "
            f"max {pi.max():.6g}"
        )
    gamma = getattr(sampler, "gamma", None)
    if gamma is not None and abs(float(pi.sum()) - gamma) > SUM_TOLERANCE * num_blocks:
        raise ValueError(
            f"{name}.inclusion_probabilities() sum to {pi.sum():.8g} but its gamma is {gamma}; "
            "a sampler that draws exactly gamma blocks has probabilities that sum to gamma"
        )


def check_draw(sampler: Sampler, raw: Iterable[Any], num_blocks: int) -> tuple[int, ...]:
    """A sampler's draw as sorted block indices, refused unless distinct, in range and gamma long.

    Raises:
        ValueError: naming the sampler, what it returned and what a sampler must return.

    Example:
        >>> check_draw(make_sampler("uniform", 6, gamma=2), [4, 1], 6)
        (1, 4)
    """
    raw = list(raw)
    name = type(sampler).__name__
    if not all(is_int(i) for i in raw):
        raise ValueError(f"{name}.sample returned {raw}; block indices must be integers")
    drawn = tuple(sorted(int(i) for i in raw))
    if any(i < 0 or i >= num_blocks for i in drawn):
        raise ValueError(f"{name}.sample returned blocks {drawn} outside 0..{num_blocks - 1}")
    if len(set(drawn)) != len(drawn):
        raise ValueError(
            f"{name}.sample returned {drawn}, which repeats a block, so fewer blocks would "
            "train than drawn; a sampler must return distinct indices"
        )
    sampler_gamma = getattr(sampler, "gamma", None)
    if sampler_gamma is not None and len(drawn) != sampler_gamma:
        raise ValueError(
            f"{name}.sample returned {len(drawn)} blocks {drawn} but the sampler's gamma is "
            f"{sampler_gamma}; a fixed-size sampler must return exactly gamma blocks"
        )
    return drawn
