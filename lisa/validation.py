"""Checks of user-given settings, shared by every config in the project (one copy each).

Each check returns the value in canonical form or raises ValueError naming the field, the value
and what would be accepted, so that a config's ``__post_init__`` is a list of calls.
"""

from __future__ import annotations

import math
import operator
from typing import Any

__all__ = ["check_fraction", "check_int", "check_positive_float"]


def is_int(value: object) -> bool:
    """True for Python and numpy integers; False for bool (``gamma=True`` is a bug, not a 1).

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def check_int(name: str, value: Any, *, minimum: int = 1, hint: str = "") -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``name``.

    Args:
        name: the field, as the user spells it.
        value: what was given.
        minimum: the least accepted value (1 for counts, 0 for seeds).
        hint: what the field means, appended in brackets, e.g. "optimizer steps".

    Returns:
        The value as a plain int.

    Example:
        >>> check_int("steps", 0, hint="optimizer steps")
        Traceback (most recent call last):
        ...
        ValueError: steps=0 must be an integer >= 1 (optimizer steps)
    """
    if not is_int(value) or operator.index(value) < minimum:
        suffix = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{suffix}")
    return operator.index(value)


def check_positive_float(name: str, value: Any, *, hint: str = "") -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``.

    Example:
        >>> check_positive_float("learning_rate", 1e-4)
        0.0001
    """
    number = _as_float(value)
    if not (math.isfinite(number) and number > 0):
        suffix = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value!r} must be a finite number > 0{suffix}")
    return number


def check_fraction(name: str, value: Any, *, upper_inclusive: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``upper_inclusive``).

    Example:
        >>> check_fraction("lora_dropout", 0.1)
        0.1
    """
    number = _as_float(value)
    above = number > 1 if upper_inclusive else number >= 1
    if not math.isfinite(number) or number < 0 or above:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name}={value!r} must be a number in {interval}")
    return number


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
