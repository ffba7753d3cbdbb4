"""``--data pydoc``: real text from the standard library, split by content hash, within length."""

from __future__ import annotations

import json

import pytest

from lisa_apps.cli import main
from lisa_apps.data import load_examples, pydoc_examples, tokenize_examples
from lisa_apps.data.python_docs import PIECE_CHARS, split_text
from lisa_apps.data.split import jsonl_split
from lisa_apps.models import load_tokenizer


def test_pydoc_splits_are_deterministic_disjoint_and_cover_every_piece():
    train, test = pydoc_examples("train"), pydoc_examples("test")
    assert len(train) > 500 and len(test) > 50
    assert pydoc_examples("train") == train and load_examples("pydoc", split="test") == test
    every = pydoc_examples()
    assert len(train) + len(test) == len(every)
    assert not {json.dumps(e) for e in train} & {json.dumps(e) for e in test}
    assert all(jsonl_split(example) == "test" for example in test)
    assert {e["answer"] for e in every} == {None}
    assert all(0 < len(e["output"]) <= PIECE_CHARS for e in every)
    # The same seed picks the same subset; another seed another.
    assert load_examples("python-docs", num_examples=20, seed=1) == load_examples("pydoc", num_examples=20, seed=1)
    assert load_examples("pydoc", num_examples=20, seed=1) != load_examples("pydoc", num_examples=20, seed=2)
    with pytest.raises(ValueError, match="data_format describe a data set file; pydoc is built in"):
        load_examples("pydoc", data_format="text")


def test_split_text_keeps_paragraphs_whole_and_loses_no_word():
    text = "alpha beta\n\ngamma delta epsilon\nzeta\n\n" + "x" * 25
    pieces = split_text(text, limit=12)
    assert all(len(p) <= 12 for p in pieces)
    assert pieces[0] == "alpha beta"
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_every_pydoc_record_fits_the_length_its_tokenizer_needs():
    examples = pydoc_examples()
    # SmolLM2's BPE: every record whole at 320 tokens (see PIECE_CHARS).
    kept = tokenize_examples(examples, load_tokenizer("smollm2-135m"), max_length=320, drop_long=True)
    assert len(kept) == len(examples)


def test_lisa_train_on_pydoc_runs_two_steps(tmp_path):
    # 256 tokens of the tiny model's byte-level tokenizer cut long responses short (with a note);
    # enough for two steps.
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-llama", "--data", "pydoc", "--steps", "2",
                 "--batch-size", "2", "--max-length", "256", "--train-examples", "8",
                 "--eval-examples", "4", "--device", "cpu", "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_train_examples"] == 8 and metrics["after"]["num_scored"] == 0
    assert metrics["after"]["eval_loss"] > 0
