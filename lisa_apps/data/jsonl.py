"""A list reader for alpaca JSONL files (the held-out split lives in :mod:`lisa_apps.data.split`)."""

from __future__ import annotations

from pathlib import Path

from lisa_apps.data.split import JSONL_TEST_FRACTION, jsonl_split

__all__ = ["JSONL_TEST_FRACTION", "jsonl_split", "load_jsonl"]

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
