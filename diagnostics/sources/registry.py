"""The source registry: names to factories, duplicates refused, built-ins registered first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diagnostics.sources.base import ScoreSource
from diagnostics.sources.file import FileSource
from diagnostics.sources.grad_norm import GradNormSource
from diagnostics.sources.norm_ratio import NormRatioSource
from diagnostics.sources.outlier import OutlierSource

__all__ = ["available_sources", "make_source", "register_source", "source_factory"]

_REGISTRY: dict[str, Callable[..., ScoreSource]] = {}


def register_source(name: str, factory: Callable[..., ScoreSource]) -> None:
    """Adds a score source under ``name``; ``make_source(name, **kw)`` then calls factory(**kw).

    Args:
        name: a new, non-empty name (duplicates are refused, built-ins included).
        factory: callable(**settings) returning an object that satisfies ``ScoreSource``.

    Raises:
        ValueError: the name is empty or already registered, or factory is not callable.

    Example:
        >>> register_source("grad-norm", GradNormSource)
        Traceback (most recent call last):
        ...
        ValueError: source name 'grad-norm' is already registered; pick another name
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r} must be a non-empty string")
    if not callable(factory):
        raise ValueError(f"factory={factory!r} for source {name!r} is not callable")
    if name in _REGISTRY:
        raise ValueError(f"source name {name!r} is already registered; pick another name")
    _REGISTRY[name] = factory


def available_sources() -> tuple[str, ...]:
    """The registered source names, built-ins first, in registration order.

    Example:
        >>> available_sources()[:4]
        ('norm-ratio', 'grad-norm', 'outlier', 'file')
    """
    return tuple(_REGISTRY)


def source_factory(name: str) -> Callable[..., ScoreSource]:
    """The factory registered as ``name`` (ValueError listing the known names otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown score source {name!r}; known sources: {', '.join(available_sources())} "
            "(add your own with register_source)"
        )
    return _REGISTRY[name]


def make_source(name: str, **settings: Any) -> ScoreSource:
    """Builds the source registered as ``name`` with its settings.

    Keyword names of the built-ins::

        make_source("norm-ratio", kind="weight", reduce="l2", lora_method="lora", ft_method="ft")
        make_source("grad-norm", reduce="l2" | "rms")
        make_source("outlier", threshold=5.0, direction="favour" | "reverse")
        make_source("file", path="scores.csv")

    Raises:
        ValueError: unknown name (the message lists the known ones) or invalid settings.
        TypeError: the factory returned something that is not a ``ScoreSource``.

    Example:
        >>> make_source("outlier", threshold=7).settings()
        {'threshold': 7.0, 'direction': 'favour'}
    """
    factory = source_factory(name)
    try:
        source = factory(**settings)
    except TypeError as error:
        raise ValueError(f"score source {name!r}: {error}") from None
    if not isinstance(source, ScoreSource):
        raise TypeError(
            f"the factory of source {name!r} returned {source!r}, which lacks name, requires, "
            "settings() or block_scores()"
        )
    return source


register_source(NormRatioSource.name, NormRatioSource)
register_source(GradNormSource.name, GradNormSource)
register_source(OutlierSource.name, OutlierSource)
register_source(FileSource.name, FileSource)
