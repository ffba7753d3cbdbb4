"""Instruction-tuning examples from a user's JSONL file, with a content-hashed held-out split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lisa_apps.data.answers import extract_answer, normalize_number

__all__ = ["JSONL_TEST_FRACTION", "jsonl_split", "load_jsonl"]

# Share of a user's JSONL records (by hash of their content) held out as the test split.
JSONL_TEST_FRACTION = 0.1


# Accepted spellings per field, canonical name first. "answer" alone (GSM8K's layout) serves as
# the output; next to an explicit output it is the short final answer.
_FIELD_ALIASES = {
    "instruction": ("instruction", "prompt", "question"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion"),
}


def load_jsonl(path: str | Path) -> list[dict]:
    """Read instruction-tuning examples from a JSONL file, one JSON object per line.

    Each line holds ``"instruction"``, optional ``"input"`` and ``"output"`` (Alpaca's fields;
    also accepted: ``prompt``/``question`` for the instruction, ``context`` for the input,
    ``response``/``completion`` for the output, and GSM8K's ``question``/``answer`` pair).
    An optional ``"answer"`` next to the output is the short final answer used for accuracy;
    without it, the answer is read from the output with :func:`extract_answer`.
    An input of ``null`` means no input. Blank (whitespace-only) lines are skipped: they hold
    no record, so nothing is lost.
    Every other problem raises; no record is dropped silently.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        Examples with ``"instruction"``, ``"input"``, ``"output"``, ``"answer"``, in file order.

    Raises:
        ValueError: naming the file, line number and what is wrong (bad JSON, not an object,
            missing or ambiguous field, non-string value, empty instruction or output), or
            that the file holds no records.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    examples: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            examples.append(_parse_record(line, f"{path}:{line_number}"))
    if not examples:
        raise ValueError(f"{path}: no records found; expected one JSON object per line")
    return examples


def _parse_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields: dict[str, str] = {}
    for field, aliases in _FIELD_ALIASES.items():
        present = [alias for alias in aliases if alias in record]
        if len(present) > 1:
            raise ValueError(f"{where}: fields {present} all mean {field!r}; keep one")
        if present:
            fields[field] = _string_field(record, present[0], where)
    answer = _string_field(record, "answer", where) if "answer" in record else None
    if "output" not in fields and answer is not None:
        fields["output"], answer = answer, None  # GSM8K layout: the answer is the solution
    for field in ("instruction", "output"):
        if field not in fields:
            raise ValueError(
                f"{where}: missing field {field!r} (accepted names: {_FIELD_ALIASES[field]}); "
                f"found {sorted(record)}"
            )
        if not fields[field].strip():
            raise ValueError(f"{where}: field {field!r} is empty")
    output = fields["output"]
    final = normalize_number(answer) if answer is not None else extract_answer(output)
    if answer is not None and final is None:
        final = answer.strip()  # a non-numeric answer still scores by exact match
    return {
        "instruction": fields["instruction"],
        "input": fields.get("input", ""),
        "output": output,
        "answer": final,
    }


def _string_field(record: dict, name: str, where: str) -> str:
    value = record[name]
    if name in _FIELD_ALIASES["input"] and value is None:
        return ""  # an optional input written as null means no input
    # Numbers are fine as answers ("answer": 42); elsewhere a non-string is a mistake.
    if name == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def jsonl_split(example: dict) -> str:
    """Return the split a user example belongs to: ``JSONL_TEST_FRACTION`` of them are "test".

    Decided by a SHA-256 of the example's instruction, input and output, so it is stable when
    records are added, removed or reordered, and duplicates always land together.

    Args:
        example: a dict with ``"instruction"``, ``"input"`` and ``"output"``.

    Returns:
        ``"train"`` or ``"test"``.
    """
    content = json.dumps([example["instruction"], example["input"], example["output"]])
    bucket = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < JSONL_TEST_FRACTION else "train"
