"""Fine-tuning data: the user's sets in the field's formats, a maths generator, tokenisation, collation.

An *example* is a dict in one of three canonical forms (:mod:`lisa_apps.data.formats`):
alpaca's ``"instruction"``, ``"input"`` (may be ``""``), ``"output"`` (the response to learn)
and ``"answer"`` (the final numeric answer as a string, or ``None``); a conversation
``{"messages": [{"role", "content"}, ...], "answer": None}``; or ``{"text", "answer": None}``.
Worked solutions end in a GSM8K-style answer line ``#### 42``; :func:`extract_answer` reads that
line back (and falls back to the last number in free text, so it also scores a model that has
not learnt the format yet).

``load_examples(spec, split=...)`` is the one entry point of the commands: ``"math"`` for the
generator, ``"pydoc"`` for real text shipped with Python (:mod:`lisa_apps.data.python_docs`), or
a file, saved folder or hub name (see docs/data.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lisa_apps.data.answers import extract_answer, normalize_number
from lisa_apps.data.chat import (
    IGNORE_INDEX,
    DataCollator,
    example_messages,
    loss_spans,
    prompt_text,
    render_messages,
    tokenize_examples,
    user_message,
)
from lisa_apps.data.formats import FORMATS, detect_format, normalize_record, parse_columns
from lisa_apps.data.jsonl import JSONL_TEST_FRACTION, jsonl_split, load_jsonl
from lisa_apps.data.math_problems import SPLITS, make_math_problems, problem_id, problem_split
from lisa_apps.data.packing import model_inputs, pack_features
from lisa_apps.data.python_docs import PYDOC_NAMES, pydoc_examples
from lisa_apps.data.sources import Examples, read_examples

__all__ = [
    "DEFAULT_NUM_EXAMPLES",
    "FORMATS",
    "IGNORE_INDEX",
    "JSONL_TEST_FRACTION",
    "PYDOC_NAMES",
    "SPLITS",
    "DataCollator",
    "Examples",
    "detect_format",
    "example_messages",
    "extract_answer",
    "jsonl_split",
    "load_examples",
    "load_jsonl",
    "loss_spans",
    "make_math_problems",
    "model_inputs",
    "normalize_number",
    "normalize_record",
    "pack_features",
    "parse_columns",
    "problem_id",
    "problem_split",
    "prompt_text",
    "pydoc_examples",
    "read_examples",
    "render_messages",
    "tokenize_examples",
    "user_message",
]

DEFAULT_NUM_EXAMPLES = {"train": 1000, "test": 200}


def load_examples(
    spec: str,
    *,
    split: str = "train",
    num_examples: int | None = None,
    seed: int = 0,
    data_format: str | None = None,
    columns: dict[str, str] | None = None,
    data_split: str | None = None,
    eval_data: str | None = None,
) -> Sequence[dict]:
    """Load examples by spec: ``"math"`` (the generator) or a user's data set.

    For ``"math"``, ``num_examples`` defaults to 1000 (train) or 200 (test) and ``seed`` seeds
    the generator. A data set is a ``.json``/``.jsonl``/``.parquet``/``.csv`` file, a folder
    written by ``save_to_disk`` or a hub name (see :func:`read_examples`), in any of
    :data:`FORMATS`. Its held-out split is deterministic: an example is "test" when a hash of
    its content falls in the lowest ``JSONL_TEST_FRACTION`` (10%), see :func:`jsonl_split`;
    ``split="all"`` returns every record. With ``eval_data`` nothing is held out of ``spec``:
    "train" is all of ``spec`` and "test" all of ``eval_data``. ``num_examples`` then keeps a
    ``seed``-chosen subset in file order.

    Args:
        spec: ``"math"``, a file, a saved-dataset folder or a hub dataset name.
        split: ``"train"``, ``"test"`` (or ``"all"`` for a data set).
        num_examples: how many examples to return; ``None`` for the default / all.
        seed: generator seed, or subset seed for a data set.
        data_format: force a format (``None``: detect it from the columns).
        columns: renames, field -> the set's column (see :func:`parse_columns`).
        data_split: the split of a DatasetDict folder or hub set.
        eval_data: a separate held-out set (same format options).

    Returns:
        A list of examples (a memory-mapped :class:`Examples` for a data set).

    Raises:
        ValueError: unknown spec or split, a bad record (naming file and line), or a split
            that came out empty.
    """
    if spec == "math":
        count = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
        return make_math_problems(count, seed=seed, split=split)
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split={split!r} is not one of {(*SPLITS, 'all')}")
    if spec in PYDOC_NAMES and not (eval_data is not None and split == "test"):
        options = {"data_format": data_format, "columns": columns, "data_split": data_split}
        given = [name for name, value in options.items() if value] if eval_data is None else []
        if given:
            raise ValueError(f"{', '.join(given)} describe a data set file; {spec} is built in")
        examples = pydoc_examples("all" if eval_data is not None else split)
        if num_examples is not None and num_examples < len(examples):
            chosen = np.sort(
                np.random.default_rng(seed).choice(len(examples), num_examples, replace=False)
            )
            examples = [examples[i] for i in chosen]
        return examples
    options = {"data_format": data_format, "columns": columns, "data_split": data_split}
    if eval_data is not None and split != "all":
        examples = read_examples(eval_data if split == "test" else spec, **options)
    else:
        examples = read_examples(spec, **options)
        if split != "all":
            held_out = examples.dataset.data.column("held_out").to_numpy(zero_copy_only=False)
            wanted = held_out if split == "test" else ~held_out
            examples = examples.select(np.flatnonzero(wanted))
            if not len(examples):
                raise ValueError(
                    f"{spec}: no {split} examples; about {JSONL_TEST_FRACTION:.0%} of the records "
                    "are held out by a hash of their content, so add records or give a separate "
                    "held-out set (--eval-data)"
                )
    if num_examples is not None and num_examples < len(examples):
        chosen = np.sort(
            np.random.default_rng(seed).choice(len(examples), num_examples, replace=False)
        )
        examples = examples.select(chosen)
    return examples
