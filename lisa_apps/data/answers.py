"""Reading a final numeric answer back from a solution or a model's generated text."""

from __future__ import annotations

import re

__all__ = ["extract_answer", "normalize_number"]

_FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """Read the final numeric answer from a solution or a model's generated text.

    Order: the first ``#### N`` line; else the last "the answer is N"; else the last number in
    the text. Thousands separators are removed and a trailing ``.0`` is dropped, so ``"1,200"``
    and ``"1200.0"`` both give ``"1200"``.

    Args:
        text: the solution text.

    Returns:
        The answer as a canonical number string, or ``None`` when the text has no number.

    Example:
        >>> extract_answer("3 * 4 = 12.\\n#### 12")
        '12'
        >>> extract_answer("So the answer is $1,200.") is not None
        True
    """
    match = _FINAL_ANSWER.search(text)
    if match is None:
        found = _ANSWER_IS.findall(text)
        candidate = found[-1] if found else None
        if candidate is None:
            numbers = _NUMBER.findall(text)
            candidate = numbers[-1] if numbers else None
    else:
        candidate = match.group(1)
    if candidate is None:
        return None
    return normalize_number(candidate)


def normalize_number(text: str) -> str | None:
    """Canonicalise a number string: drop commas and ``$``, integers without ``.0``.

    Args:
        text: e.g. ``"1,200"``, ``"$42"``, ``"7.50"``.

    Returns:
        ``"1200"``, ``"42"``, ``"7.5"``; ``None`` when it is not a number.
    """
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value.is_integer():
        return str(int(value))
    return repr(value)
