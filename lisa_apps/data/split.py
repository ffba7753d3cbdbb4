"""The content-hashed held-out split of a user's examples (stable under reordering and edits)."""

from __future__ import annotations

import hashlib
import json

__all__ = ["JSONL_TEST_FRACTION", "jsonl_split"]

# Share of a user's records (by hash of their content) held out as the test split.
JSONL_TEST_FRACTION = 0.1


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
