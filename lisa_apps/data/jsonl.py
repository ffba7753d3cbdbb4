"""The content-hashed held-out split of a user's examples, and a list reader for alpaca JSONL files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["JSONL_TEST_FRACTION", "jsonl_split", "load_jsonl"]

# Share of a user's records (by hash of their content) held out as the test split.
JSONL_TEST_FRACTION = 0.1


def load_jsonl(path: str | Path) -> list[dict]:
    """Read alpaca-style instruction-tuning examples from a JSONL file into a list.

    Each line holds ``"instruction"``, optional ``"input"`` and ``"output"`` (Alpaca's fields;
    also accepted: ``prompt``/``question`` for the instruction, ``context`` for the input,
    ``response``/``completion`` for the output, and GSM8K's ``question``/``answer`` pair).
    An optional ``"answer"`` next to the output is the short final answer used for accuracy;
    without it, the answer is read from the output with :func:`extract_answer`.
    An input of ``null`` means no input. Blank (whitespace-only) lines are skipped: they hold
    no record, so nothing is lost. Every other problem raises; no record is dropped silently.
    (:func:`lisa_apps.data.load_examples` reads every format and source, memory-mapped.)

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
    from lisa_apps.data.formats import normalize_record
    from lisa_apps.data.sources import _json_records

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    examples = [
        normalize_record(record, "alpaca", where)
        for where, record in _json_records(str(path), str(path))
    ]
    if not examples:
        raise ValueError(f"{path}: no records found; expected one JSON object per line")
    return examples


def jsonl_split(example: dict) -> str:
    """Return the split a user example belongs to: ``JSONL_TEST_FRACTION`` of them are "test".

    Decided by a SHA-256 of the example's content (alpaca: instruction, input and output; a
    conversation: its messages; text: the text), so it is stable when records are added,
    removed or reordered, and duplicates always land together.

    Args:
        example: a canonical example (see :mod:`lisa_apps.data.formats`).

    Returns:
        ``"train"`` or ``"test"``.
    """
    if "messages" in example:
        content = json.dumps([[m["role"], m["content"]] for m in example["messages"]])
    elif "text" in example and "output" not in example:
        content = json.dumps([example["text"]])
    else:
        content = json.dumps([example["instruction"], example["input"], example["output"]])
    bucket = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < JSONL_TEST_FRACTION else "train"
