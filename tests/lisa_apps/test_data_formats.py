"""Users' data sets: every format and source gives the hand-built tokens and labels; packing; bad input."""

from __future__ import annotations

import copy
import json
import logging
import re

import datasets
import pandas as pd
import pytest
import torch

from lisa_apps import cli
from lisa_apps.commands.arguments import DATA_FORMATS
from lisa_apps.data import (
    FORMATS,
    IGNORE_INDEX,
    DataCollator,
    jsonl_split,
    load_examples,
    model_inputs,
    pack_features,
    tokenize_examples,
)
from lisa_apps.models import load_model

MODEL, TOKENIZER = load_model("tiny-llama")  # ChatML template, character-level vocabulary

SYSTEM, USER_1, REPLY_1, USER_2, REPLY_2 = "Be brief.", "Hi there", "Hello!", "What is 2+2?", "4"
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": REPLY_1},
    {"role": "user", "content": USER_2},
    {"role": "assistant", "content": REPLY_2},
]


def hand_built(pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Tokens and labels from (text, carries loss) pieces, each tokenised on its own."""
    input_ids, labels = [], []
    for text, learn in pieces:
        ids = TOKENIZER(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if learn else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


# ChatML written out by hand: loss on each assistant message and its end-of-turn marker only.
THREE_TURNS = hand_built(
    [
        (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER_1}<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        (f"{REPLY_1}<|im_end|>\n", True),
        (f"<|im_start|>user\n{USER_2}<|im_end|>\n<|im_start|>assistant\n", False),
        (f"{REPLY_2}<|im_end|>\n", True),
    ]
)  # fmt: skip


def features_of(examples, **options):
    return [(f["input_ids"], f["labels"]) for f in tokenize_examples(examples, TOKENIZER, **options)]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def test_the_command_line_lists_the_loader_formats():
    assert DATA_FORMATS == FORMATS


# --- formats and sources ----------------------------------------------------------------------


def test_messages_jsonl_labels_exactly_the_assistant_turns_and_keeps_the_system_prompt(tmp_path):
    spec = write_jsonl(tmp_path / "chat.jsonl", [{"messages": MESSAGES}])
    examples = load_examples(spec, split="all")
    assert list(examples) == [{"messages": MESSAGES, "answer": None}]
    assert features_of(examples) == [THREE_TURNS]
    # Read from an Arrow file on disk (memory-mapped), not held as Python objects.
    assert examples.dataset.cache_files and examples.dataset.cache_files[0]["filename"].endswith(".arrow")


def test_sharegpt_json_array_with_a_bom_and_upper_case_suffix_reads_the_same(tmp_path):
    speakers = {"system": "system", "user": "human", "assistant": "gpt"}
    record = {"conversations": [{"from": speakers[m["role"]], "value": m["content"]} for m in MESSAGES]}
    path = tmp_path / "chat.JSON"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([record], indent=2).encode())
    assert features_of(load_examples(str(path), split="all")) == [THREE_TURNS]
    lines = tmp_path / "chat.JSONL"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\n")
    assert features_of(load_examples(str(lines), split="all")) == [THREE_TURNS]


def test_a_renamed_sharegpt_column_reads_with_the_forced_format(tmp_path):
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    spec = write_jsonl(tmp_path / "dialog.jsonl", [{"dialog": turns}])
    with pytest.raises(ValueError, match=r"dialog\.jsonl:1: turn 1 has 'from' and 'value'.*sharegpt"):
        load_examples(spec, split="all", columns={"messages": "dialog"})
    [example] = load_examples(
        spec, split="all", columns={"messages": "dialog"}, data_format="sharegpt"
    )
    assert example["messages"] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}
    ]


def test_parquet_and_a_saved_dataset_dict_read_the_same(tmp_path):
    datasets.Dataset.from_list([{"messages": MESSAGES}]).to_parquet(str(tmp_path / "chat.parquet"))
    assert features_of(load_examples(str(tmp_path / "chat.parquet"), split="all")) == [THREE_TURNS]
    other = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    saved = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"messages": MESSAGES}]),
            "validation": datasets.Dataset.from_list([{"messages": other}]),
        }
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    folder = str(tmp_path / "saved")
    assert features_of(load_examples(folder, split="all")) == [THREE_TURNS]  # train by default
    validation = load_examples(folder, split="all", data_split="validation")
    assert list(validation) == [{"messages": other, "answer": None}]
    with pytest.raises(ValueError, match=r"no split 'test'; it holds \['train', 'validation'\]"):
        load_examples(folder, split="all", data_split="test")


def test_alpaca_csv_with_renamed_columns_and_a_system_prompt(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,solution,persona\nAdd 2 and 3,"2 + 3 = 5\n#### 5",Be brief.\n')
    columns = {"instruction": "question", "output": "solution", "system": "persona"}
    [example] = load_examples(str(path), split="all", columns=columns)
    assert example == {
        "instruction": "Add 2 and 3", "input": "", "output": "2 + 3 = 5\n#### 5", "answer": "5",
        "system": "Be brief.",
    }  # fmt: skip
    expected = hand_built(
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd 2 and 3<|im_end|>\n"
             "<|im_start|>assistant\n", False),
            ("2 + 3 = 5\n#### 5<|im_end|>\n", True),
        ]
    )  # fmt: skip
    assert features_of([example]) == [expected]


def test_csv_cells_are_text_even_when_they_look_like_numbers(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_bytes(b"\xef\xbb\xbfinstruction,output,input\nCode?,007,\n")
    assert list(load_examples(str(path), split="all")) == [
        {"instruction": "Code?", "input": "", "output": "007", "answer": "7"}
    ]


def test_text_format_carries_loss_on_every_token(tmp_path):
    spec = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "Once upon a time."}])
    [(input_ids, labels)] = features_of(load_examples(spec, split="all"))
    ids = TOKENIZER("Once upon a time.")["input_ids"] + [TOKENIZER.eos_token_id]
    assert input_ids == ids and labels == ids


def test_data_format_forces_a_layout_the_columns_would_not_choose(tmp_path):
    # "text" next to instruction/output columns would read as alpaca; --data-format text forces it.
    spec = write_jsonl(
        tmp_path / "mixed.jsonl", [{"instruction": "a", "output": "b", "text": "plain words"}]
    )
    assert "instruction" in load_examples(spec, split="all")[0]
    assert list(load_examples(spec, split="all", data_format="text")) == [
        {"text": "plain words", "answer": None}
    ]


def test_a_tokenizer_without_a_chat_template_gets_role_lines_and_a_warning(caplog):
    plain = copy.copy(TOKENIZER)
    plain.chat_template = None
    example = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    with caplog.at_level(logging.WARNING):
        [(input_ids, labels)] = [
            (f["input_ids"], f["labels"]) for f in tokenize_examples([example], plain)
        ]
    assert "no chat template" in caplog.text
    eos = TOKENIZER.eos_token
    assert (input_ids, labels) == hand_built(
        [("user: Hi\nassistant: ", False), (f"Yo{eos}\n", True)]
    )


def test_held_out_split_by_content_hash_covers_chat_sets_and_eval_data_replaces_it(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(60)
    ]
    spec = write_jsonl(tmp_path / "chat.jsonl", records)
    train, test = load_examples(spec, split="train"), load_examples(spec, split="test")
    assert len(train) + len(test) == 60 and len(test) > 0
    assert all(jsonl_split(e) == "test" for e in test) and all(jsonl_split(e) == "train" for e in train)
    held = write_jsonl(tmp_path / "held.jsonl", records[:3])
    assert len(load_examples(spec, split="train", eval_data=held)) == 60
    assert list(load_examples(spec, split="test", eval_data=held)) == [
        {**r, "answer": None} for r in records[:3]
    ]


# --- lengths ----------------------------------------------------------------------------------


def test_long_examples_are_cut_or_dropped_and_a_turn_cut_away_is_not_trained(caplog):
    short = {"messages": MESSAGES[1:3]}
    long_prompt = {"messages": [{"role": "user", "content": "x" * 200}, MESSAGES[2]]}
    full = len(THREE_TURNS[0])
    with caplog.at_level(logging.WARNING):
        kept = features_of([{"messages": MESSAGES}, long_prompt, short], max_length=full - 2)
    # The three-turn one is cut (its last reply loses two tokens); the long prompt has no reply left.
    assert kept[0] == (THREE_TURNS[0][:-2], THREE_TURNS[1][:-2]) and len(kept) == 2
    assert "truncated the response of 2 of 3" in caplog.text  # the long prompt was cut too
    assert "skipped 1 of 3 examples" in caplog.text and "[1]" in caplog.text
    with caplog.at_level(logging.WARNING):
        assert len(features_of([{"messages": MESSAGES}, short], max_length=full - 2, drop_long=True)) == 1
    assert "dropped 1 of 2" in caplog.text
    with pytest.raises(ValueError, match="raise max_length"):
        tokenize_examples([long_prompt], TOKENIZER, max_length=50)


# --- packing ----------------------------------------------------------------------------------


def chat_features(count: int) -> list[dict]:
    examples = [
        {"messages": [{"role": "user", "content": f"Say {i} twice"},
                      {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(count)
    ]  # fmt: skip
    examples.append({"messages": MESSAGES})
    return tokenize_examples(examples, TOKENIZER, max_length=256)


def mean_loss(batch) -> torch.Tensor:
    with torch.no_grad():
        return MODEL(**model_inputs(batch), labels=batch["labels"]).loss


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_has_the_loss_of_the_unpacked_batch(attention):
    MODEL.set_attn_implementation(attention)
    try:
        features = chat_features(5)
        packed = pack_features(features, max_length=256)
        assert len(packed) < len(features)
        collate = DataCollator(TOKENIZER)
        unpacked_loss = mean_loss(collate(features))
        packed_loss = mean_loss(collate(packed))
    finally:
        MODEL.set_attn_implementation("sdpa")
    # Both are the mean cross-entropy over the same label tokens, with the same positions and
    # the same keys visible to each query; only float32 summation order differs (softmax and
    # matmul over <= 256 keys, padded rows vs packed rows). A reordered float32 sum of n terms
    # moves by at most about n * eps = 256 * 1.2e-7 = 3e-5 relative. (Measured: 8e-8. A leak
    # across examples, with the KV cache left on, moved this loss by 5e-4 relative.)
    assert torch.allclose(packed_loss, unpacked_loss, rtol=3e-5, atol=0)


def test_no_token_of_a_packed_row_attends_to_another_example():
    first, second = chat_features(1)
    changed = dict(first, input_ids=[(token + 7) % 90 + 5 for token in first["input_ids"]])
    collate = DataCollator(TOKENIZER)
    logits = []
    for head in (first, changed):
        [row] = pack_features([head, second], max_length=512)
        batch = collate([row])
        with torch.no_grad():
            logits.append(MODEL(**model_inputs(batch)).logits[0, len(head["input_ids"]) :])
    # The second example's logits do not move when the first example's tokens change. Masked
    # keys add exact zeros, so only summation order may differ: logits are O(10), float32 eps is
    # 1.2e-7, so a few ulp is ~1e-6 (a leak moves them by ~0.6, measured).
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)
    assert not torch.equal(logits[0], torch.zeros_like(logits[0]))


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', "bad.jsonl:2: invalid JSON"),
        ("cols.jsonl", b'{"foo": 1, "bar": 2}\n',
         "cannot tell the data format from the columns ['bar', 'foo']"),
        ("noreply.jsonl",
         b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
         b'{"messages": [{"role": "user", "content": "a"}]}\n',
         "noreply.jsonl:2: the conversation has no assistant turn"),
        ("empty.jsonl", b"\n  \n", "empty.jsonl: no records found"),
        ("latin.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n',
         "latin.jsonl:3: not UTF-8 text (byte 0xe9)"),
        ("latin.json", b'[\n{"text": "ok"},\n{"text": "caf\xe9"}\n]', "latin.json:3: not UTF-8 text"),
        ("latin.csv", b"text\nok\ncaf\xe9\n", "latin.csv:3: not UTF-8 text (byte 0xe9)"),
        ("nan.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b", '
         b'"answer": NaN}\n', "nan.jsonl:2: NaN is not valid JSON"),
        ("inf.json", b'[{"text": "a"},\n {"text": "b", "score": -Infinity}]',
         "inf.json:2: -Infinity is not valid JSON"),
        ("role.jsonl", b'{"messages": [{"role": "bot", "content": "a"}]}\n',
         "role.jsonl:1: turn 1 has role='bot'; use one of system, user, assistant"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_examples(str(tmp_path / name), split="all")


def test_unknown_format_missing_column_and_empty_split_say_the_fix(tmp_path):
    spec = write_jsonl(tmp_path / "one.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(ValueError, match="data format 'xml' is not one of alpaca"):
        load_examples(spec, data_format="xml")
    with pytest.raises(ValueError, match="maps output=solution but the record has no 'solution'"):
        load_examples(spec, split="all", columns={"output": "solution"})
    other = "train" if jsonl_split(load_examples(spec, split="all")[0]) == "test" else "test"
    with pytest.raises(ValueError, match=f"no {other} examples") as error:
        load_examples(spec, split=other)
    assert "--eval-data" in str(error.value) and "split=" not in str(error.value)


def test_an_uncached_hub_set_offline_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"someone/no-such-set: not a local file or folder, and "
                       r"this machine is offline .* pass a local file"):  # fmt: skip
        load_examples("someone/no-such-set", split="all")


def test_lisa_train_refuses_bad_data_in_one_line_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a"}\n{"text": NaN}\n')
    argv = ["train", "--model", "tiny-llama", "--data", str(tmp_path / "bad.jsonl"),
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "bad.jsonl:2: NaN is not valid JSON" in error
    assert cli.main(["train", "--data", "math", "--data-format", "text", "--out", str(tmp_path / "r")]) == 2
    assert "--data-format describe a data set file" in capsys.readouterr().err


def test_lisa_train_on_a_chat_file(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": str(i)}]}
        for i in range(12)
    ]
    spec = write_jsonl(tmp_path / "chat.jsonl", records)
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny-llama", "--data", spec, "--steps", "2", "--batch-size", "2",
            "--max-length", "64", "--packing", "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["packing"] is True
    assert metrics["after"]["accuracy"] is None and metrics["after"]["eval_loss"] > 0


def test_diagnose_and_study_pass_the_layout_options_to_the_loader(tmp_path, capsys):
    # A chat file read as text lacks the "text" field: the refusal shows --data-format arrived.
    spec = write_jsonl(tmp_path / "chat.jsonl", [{"messages": MESSAGES}] * 3)
    for command in ("diagnose", "study"):
        argv = [command, "--model", "tiny-llama", "--data", spec, "--data-format", "text",
                "--out", str(tmp_path / command)]  # fmt: skip
        assert cli.main(argv) == 2
        assert "chat.jsonl:1: missing field 'text'" in capsys.readouterr().err


def test_lisa_study_on_a_chat_file_scores_loss_and_no_accuracy(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": f"Say {i}"}, {"role": "assistant", "content": str(i)}]}
        for i in range(16)
    ]
    spec = write_jsonl(tmp_path / "chat.jsonl", records)
    held = write_jsonl(tmp_path / "held.jsonl", records[:2])
    out = tmp_path / "study"
    argv = ["study", "--model", "tiny-llama", "--methods", "lisa", "--seeds", "1", "--steps", "1",
            "--lr-factors", "1", "--data", spec, "--eval-data", held, "--val-examples", "2",
            "--test-examples", "2", "--max-length", "64", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 1 and runs["test_loss"].notna().all()
    assert runs["test_accuracy"].isna().all() and (runs["num_scored"] == 0).all()
