"""Tests for lisa.data: maths generator, JSONL loading, tokenisation with masked prompts, collation."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lisa_apps.data import (
    IGNORE_INDEX,
    DataCollator,
    extract_answer,
    jsonl_split,
    load_examples,
    load_jsonl,
    make_math_problems,
    prompt_text,
    tokenize_examples,
)
from lisa_apps.models import build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()
STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")

# --- generator --------------------------------------------------------------------------------


@given(st.integers(0, 2**31 - 1), st.sampled_from(["train", "test"]))
def test_same_seed_gives_same_problems(seed, split):
    assert make_math_problems(20, seed=seed, split=split) == make_math_problems(
        20, seed=seed, split=split
    )


def test_different_seeds_give_different_problems():
    assert make_math_problems(20, seed=0) != make_math_problems(20, seed=1)


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 1000))
def test_shorter_list_is_a_prefix_of_a_longer_one(n, m, seed):
    short, long = sorted((n, m))
    assert make_math_problems(long, seed=seed)[:short] == make_math_problems(short, seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_and_test_never_share_a_problem(seed):
    train = make_math_problems(1500, seed=seed, split="train")
    # Another seed's test split too: the split is a property of the problem, not of the seed.
    test = make_math_problems(300, seed=seed, split="test") + make_math_problems(
        300, seed=seed + 7, split="test"
    )
    assert {p["id"] for p in train}.isdisjoint(p["id"] for p in test)
    assert {p["instruction"] for p in train}.isdisjoint(p["instruction"] for p in test)
    assert len({p["id"] for p in train}) == len(train)  # distinct within a split too


@given(st.integers(0, 10_000), st.sampled_from(["train", "test"]))
def test_every_worked_step_is_correct_and_ends_in_the_answer(seed, split):
    for problem in make_math_problems(15, seed=seed, split=split):
        lines = problem["output"].splitlines()
        assert lines[-1] == f"#### {problem['answer']}"
        assert extract_answer(problem["output"]) == problem["answer"]
        assert int(problem["answer"]) > 0 and problem["input"] == ""
        steps = [STEP.search(line) for line in lines[:-1]]
        assert all(steps), lines
        for match in steps:
            a, op, b, result = match.groups()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(op)
            if op == "/":
                assert int(a) % int(b) == 0
                expected = int(a) // int(b)
            assert expected == int(result), match.group(0)
        # The final step's result is the answer.
        assert steps[-1].group(4) == problem["answer"]


def test_all_templates_appear():
    text = " ".join(p["instruction"] for p in make_math_problems(300, seed=0))
    for marker in (
        "pays with",
        "in total, in dollars",
        "shares the rest",
        "per minute",
        "every week",
        "have now?",
    ):
        assert marker in text, marker


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split='valid'"):
        make_math_problems(3, split="valid")
    with pytest.raises(ValueError, match="num_problems=-1"):
        make_math_problems(-1)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("2 + 2 = 4\n#### 4", "4"),
        ("#### 1,234", "1234"),
        ("so 3 + 4 = 7. The answer is 7.", "7"),
        ("The answer is: $12.50", "12.5"),
        ("first 3, then 8 apples", "8"),
        ("#### 9\nthen rambling 12", "9"),
        ("x = 10.0", "10"),
        ("-3 degrees", "-3"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


# --- JSONL ------------------------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_reads_alpaca_fields_and_skips_blank_lines(tmp_path):
    path = write_lines(
        tmp_path / "data.jsonl",
        [
            json.dumps({"instruction": "Add", "input": "2 and 3", "output": "5"}),
            "",
            "   ",
            json.dumps({"instruction": "Say hi", "input": None, "output": "Hello!"}),
            json.dumps({"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"}),
            json.dumps({"prompt": "Total?", "response": "It is 7 dollars.", "answer": 7}),
        ],
    )
    examples = load_jsonl(path)
    assert examples == [
        {"instruction": "Add", "input": "2 and 3", "output": "5", "answer": "5"},
        {"instruction": "Say hi", "input": "", "output": "Hello!", "answer": None},
        {"instruction": "1+1?", "input": "", "output": "1 + 1 = 2\n#### 2", "answer": "2"},
        {"instruction": "Total?", "input": "", "output": "It is 7 dollars.", "answer": "7"},
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"instruction": "a", "output": ', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object, got list"),
        ('{"instruction": "a"}', "missing field 'output'"),
        ('{"output": "a"}', "missing field 'instruction'"),
        ('{"instruction": "a", "output": 5}', "field 'output' must be a string, got int"),
        (
            '{"instruction": "a", "input": 3, "output": "b"}',
            "field 'input' must be a string, got int",
        ),
        ('{"instruction": "a", "output": "  "}', "field 'output' is empty"),
        ('{"instruction": "", "output": "b"}', "field 'instruction' is empty"),
        (
            '{"instruction": "a", "prompt": "b", "output": "c"}',
            "fields ['instruction', 'prompt'] all mean 'instruction'",
        ),
    ],
)
def test_load_jsonl_names_the_line_and_the_problem(tmp_path, bad_line, message):
    good = json.dumps({"instruction": "ok", "output": "fine"})
    path = write_lines(tmp_path / "data.jsonl", [good, "", bad_line, good])
    with pytest.raises(ValueError, match=re.escape(f"data.jsonl:3: {message}")):
        load_jsonl(path)


def test_load_jsonl_rejects_a_file_without_records(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        load_jsonl(write_lines(tmp_path / "empty.jsonl", ["", "  "]))


def test_jsonl_splits_are_disjoint_complete_and_stable(tmp_path):
    records = [{"instruction": f"q{i}", "output": f"#### {i}"} for i in range(200)]
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(r) for r in records])
    train = load_examples(str(path), split="train")
    test = load_examples(str(path), split="test")
    assert len(train) + len(test) == 200
    assert {e["instruction"] for e in train}.isdisjoint(e["instruction"] for e in test)
    assert 5 <= len(test) <= 40  # ~10% held out; binomial(200, 0.1) is inside with p > 0.999
    # Reordering the file does not move any record between splits.
    reversed_path = write_lines(tmp_path / "rev.jsonl", [json.dumps(r) for r in reversed(records)])
    assert {e["instruction"] for e in load_examples(str(reversed_path), split="test")} == {
        e["instruction"] for e in test
    }
    assert all(jsonl_split(e) == "test" for e in test)
    subset = load_examples(str(path), split="train", num_examples=10, seed=1)
    assert len(subset) == 10 and all(e in train for e in subset)
    assert load_examples(str(path), split="all") == load_jsonl(path)


def test_load_examples_math_defaults_and_errors(tmp_path):
    assert len(load_examples("math", split="test", num_examples=5)) == 5
    assert load_examples("math", num_examples=3, seed=2) == make_math_problems(3, seed=2)
    with pytest.raises(ValueError, match=r"missing\.jsonl: no such file"):
        load_examples(str(tmp_path / "missing.jsonl"))
    one = write_lines(tmp_path / "one.jsonl", [json.dumps({"instruction": "a", "output": "b"})])
    split = jsonl_split(load_jsonl(one)[0])
    other = "train" if split == "test" else "test"
    with pytest.raises(ValueError, match=f"no {other} examples"):
        load_examples(str(one), split=other)


# --- tokenisation -----------------------------------------------------------------------------


@given(st.integers(0, 500))
def test_exactly_the_response_tokens_carry_labels(seed):
    examples = make_math_problems(3, seed=seed)
    for example, feature in zip(
        examples, tokenize_examples(examples, TOKENIZER, max_length=1024), strict=True
    ):
        prompt_ids = TOKENIZER(prompt_text(example, TOKENIZER), add_special_tokens=False)[
            "input_ids"
        ]
        ids, labels = feature["input_ids"], feature["labels"]
        assert len(ids) == len(labels) == len(feature["attention_mask"])
        assert ids[: len(prompt_ids)] == prompt_ids
        assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
        # The labelled part is the output plus the end-of-turn token (so the model learns to stop).
        assert TOKENIZER.decode(labels[len(prompt_ids) :]) == example["output"] + "<|im_end|>\n"


def test_input_field_joins_the_user_turn():
    example = {"instruction": "Add these", "input": "2 and 3", "output": "5"}
    assert "Add these\n\n2 and 3<|im_end|>" in prompt_text(example, TOKENIZER)


def test_truncation_keeps_the_prompt_and_cuts_the_response(caplog):
    example = make_math_problems(1, seed=0)[0]
    prompt_length = len(
        TOKENIZER(prompt_text(example, TOKENIZER), add_special_tokens=False)["input_ids"]
    )
    with caplog.at_level(logging.WARNING, logger="lisa.data"):
        [feature] = tokenize_examples([example], TOKENIZER, max_length=prompt_length + 5)
    assert len(feature["input_ids"]) == prompt_length + 5
    assert sum(label != IGNORE_INDEX for label in feature["labels"]) == 5
    assert "truncated the response of 1 of 1" in caplog.text


def test_examples_without_room_for_a_response_are_skipped_with_a_warning(caplog):
    short = {"instruction": "Hi", "output": "Hello"}
    long = {"instruction": "x" * 300, "output": "y"}
    with caplog.at_level(logging.WARNING, logger="lisa.data"):
        features = tokenize_examples([long, short, long], TOKENIZER, max_length=100)
    assert len(features) == 1
    assert "skipped 2 of 3 examples" in caplog.text and "[0, 2]" in caplog.text
    with pytest.raises(ValueError, match="raise max_length"):
        tokenize_examples([long], TOKENIZER, max_length=100)


# --- collation --------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 12), min_size=1, max_size=6))
def test_collator_pads_inputs_mask_and_labels(lengths):
    features = [
        {
            "input_ids": list(range(1, n + 1)),
            "attention_mask": [1] * n,
            "labels": [IGNORE_INDEX, *range(2, n + 1)],
        }
        for n in lengths
    ]
    batch = DataCollator(pad_token_id=99)(features)
    width = max(lengths)
    assert {key: tuple(value.shape) for key, value in batch.items()} == {
        key: (len(lengths), width) for key in ("input_ids", "attention_mask", "labels")
    }
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row].tolist() == list(range(1, n + 1)) + [99] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row].tolist() == features[row]["labels"] + [IGNORE_INDEX] * (
            width - n
        )


def test_collator_takes_the_pad_id_from_the_tokenizer():
    assert DataCollator(TOKENIZER).pad_token_id == TOKENIZER.pad_token_id
    with pytest.raises(ValueError, match="pad_token_id"):
        DataCollator()
