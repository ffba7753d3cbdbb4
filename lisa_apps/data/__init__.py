"""Fine-tuning data: a seeded maths word-problem generator, a JSONL loader, tokenisation, collation.

An *example* is a dict with ``"instruction"``, ``"input"`` (may be ``""``), ``"output"`` (the
response to learn) and ``"answer"`` (the final numeric answer as a string, or ``None`` when the
example has none). Worked solutions end in a GSM8K-style answer line ``#### 42``;
:func:`extract_answer` reads that line back (and falls back to the last number in free text, so
it also scores a model that has not learnt the format yet).

``load_examples(spec, split=...)`` is the one entry point of the commands: ``"math"`` for the
generator, or a path to a ``.jsonl`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lisa_apps.data.answers import extract_answer, normalize_number
from lisa_apps.data.chat import (
    IGNORE_INDEX,
    DataCollator,
    prompt_text,
    tokenize_examples,
    user_message,
)
from lisa_apps.data.jsonl import JSONL_TEST_FRACTION, jsonl_split, load_jsonl
from lisa_apps.data.math_problems import SPLITS, make_math_problems, problem_id, problem_split

__all__ = [
    "DEFAULT_NUM_EXAMPLES",
    "IGNORE_INDEX",
    "JSONL_TEST_FRACTION",
    "SPLITS",
    "DataCollator",
    "extract_answer",
    "jsonl_split",
    "load_examples",
    "load_jsonl",
    "make_math_problems",
    "normalize_number",
    "problem_id",
    "problem_split",
    "prompt_text",
    "tokenize_examples",
    "user_message",
]

DEFAULT_NUM_EXAMPLES = {"train": 1000, "test": 200}


def load_examples(
    spec: str, *, split: str = "train", num_examples: int | None = None, seed: int = 0
) -> list[dict]:
    """Load examples by spec: ``"math"`` (the generator) or a path to a ``.jsonl`` file.

    For ``"math"``, ``num_examples`` defaults to 1000 (train) or 200 (test) and ``seed`` seeds
    the generator. For a JSONL file, the held-out split is deterministic: an example is "test"
    when a hash of its content falls in the lowest ``JSONL_TEST_FRACTION`` (10%), see
    :func:`jsonl_split`; ``split="all"`` returns every record. ``num_examples`` then keeps a
    ``seed``-chosen subset in file order.

    Args:
        spec: ``"math"`` or a path to a ``.jsonl`` file.
        split: ``"train"``, ``"test"`` (or ``"all"`` for a file).
        num_examples: how many examples to return; ``None`` for the default / all.
        seed: generator seed, or subset seed for a file.

    Returns:
        A list of examples (see the module docstring).

    Raises:
        ValueError: unknown spec or split, or a split that came out empty.
    """
    if spec == "math":
        count = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
        return make_math_problems(count, seed=seed, split=split)
    path = Path(spec)
    if path.suffix != ".jsonl" or not path.is_file():
        raise ValueError(f"data spec {spec!r} is neither 'math' nor an existing .jsonl file")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split={split!r} is not one of {(*SPLITS, 'all')}")
    examples = load_jsonl(path)
    if split != "all":
        examples = [example for example in examples if jsonl_split(example) == split]
    if not examples:
        raise ValueError(
            f"{path}: no {split} examples; about {JSONL_TEST_FRACTION:.0%} of the records are "
            "held out by a hash of their content, so add records or use split='all'"
        )
    if num_examples is not None and num_examples < len(examples):
        chosen = np.sort(
            np.random.default_rng(seed).choice(len(examples), num_examples, replace=False)
        )
        examples = [examples[index] for index in chosen]
    return examples
