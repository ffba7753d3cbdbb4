"""`lisa estimate MODEL`: the table, the JSON rows, the list, suggestions and refused inputs."""

from __future__ import annotations

import json

import pytest

from lisa_apps.cli import main

REQUIRED_KEYS = {
    "method", "gamma", "precision", "trainable_parameters", "parameter_bytes", "grad_bytes",
    "optimizer_state_bytes",
}  # fmt: skip


def test_json_prints_one_row_per_method_and_precision_with_the_issue_keys(capsys):
    assert main(["estimate", "tiny-llama", "--json", "--gamma", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["method"], row["precision"]) for row in rows] == [
        (method, precision)
        for precision in ("float32", "bf16-mixed", "bf16")
        for method in ("ft", "lora", "lisa", "badam")
    ]
    assert all(set(row) >= REQUIRED_KEYS for row in rows)
    assert {row["gamma"] for row in rows if row["method"] != "lisa"} == {None}
    assert {row["gamma"] for row in rows if row["method"] == "lisa"} == {1}
    assert all(isinstance(row["parameter_bytes"], int) for row in rows)


def test_table_shows_every_setup_with_the_estimate_labelled(capsys):
    assert main(["estimate", "smollm2-135m", "--precision", "bf16", "--lora-rank", "16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("smollm2-135m: 134,515,008 parameters, 30 blocks, tied E/H")
    labels = [line.split("  ")[0].strip() for line in lines[2:6]]
    assert labels == ["FT", "LoRA r16", "LISA E+H+extras+2", "BAdam 1 block"]
    assert "activations*" in lines[1] and "are an estimate" in out
    lisa = next(line for line in lines if line.startswith("LISA"))
    assert lisa.rstrip().endswith("80.0%")  # E (28.3M) and the final norm of the 35.4M trained


def test_a_suggestion_line_names_what_freezing_e_or_h_saves(capsys):
    args = ["estimate", "llama-3.1-8b", "--precision", "bf16", "--methods", "lora,lisa"]
    assert main([*args, "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("suggestion")]
    assert line.startswith("suggestion (bf16): LISA E+H+extras+2 needs ")
    assert "more than LoRA r8" in line
    for option in ("freeze E saves", "freeze H saves", "freeze E+H saves", "gamma 1 saves"):
        assert option in line


def test_lisa_groups_switched_off_and_fsdp_change_the_rows(capsys):
    assert (
        main(["estimate", "tiny-llama", "--json", "--methods", "lisa", "--precision", "bf16"]) == 0
    )
    full = json.loads(capsys.readouterr().out)[0]
    args = ["estimate", "tiny-llama", "--json", "--methods", "lisa", "--precision", "bf16"]
    assert main([*args, "--freeze-embeddings", "--freeze-head", "--freeze-extras"]) == 0
    blocks_only = json.loads(capsys.readouterr().out)[0]
    assert blocks_only["trainable_parameters"] < full["trainable_parameters"]
    assert blocks_only["embed_head_extras_share"] == 0
    assert main([*args, "--fsdp", "2"]) == 0
    sharded = json.loads(capsys.readouterr().out)[0]
    assert sharded["fsdp_ranks"] == 2 and 2 * sharded["parameter_bytes"] == full["parameter_bytes"]


def test_fsdp_leaves_badam_out_with_a_note(capsys):
    assert main(["estimate", "tiny-llama", "--fsdp", "2", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "BAdam 1 block" not in out and "note: BAdam left out" in out
    assert "FSDP2 over 2 ranks, bytes of one rank" in out


def test_list_names_the_family_configurations(capsys):
    assert main(["estimate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("llama-2-7b", "llama-3.1-70b", "mistral-7b", "qwen2.5-0.5b", "gemma-2-9b"):
        assert name in out
    assert "tiny models: tiny-gpt2, tiny-llama, tiny-qwen2" in out


def test_a_folder_with_only_config_json_is_enough(tmp_path, capsys):
    from lisa_apps.tiny import tiny_config

    tiny_config("tiny-gpt2").save_pretrained(tmp_path)
    assert main(["estimate", str(tmp_path), "--json", "--methods", "ft"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tied"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give MODEL: a name from `lisa estimate --list`"),
        (["llama-9b"], "known names: gemma-2-9b,"),
        (["tiny-llama", "--gamma", "5"], "--gamma 5 is more than the 4 blocks of tiny-llama"),
        (["tiny-llama", "--lora-rank", "0"], "argument --lora-rank: must be an integer >= 1"),
        (["tiny-llama", "--fsdp", "0"], "argument --fsdp: must be an integer >= 1, got 0"),
        (["tiny-llama", "--methods", "badam", "--fsdp", "2"], "BAdam has no FSDP2 path"),
        (["tiny-llama", "--methods", "sgd"], "sgd not among ft, lora, lisa, badam"),
        (["tiny-llama", "--precision", "fp16"], "fp16 not among float32, bf16-mixed, bf16"),
        (["tiny-llama", "--seq-len", "0"], "argument --seq-len: must be an integer >= 1"),
    ],
)
def test_bad_input_is_refused_in_one_line_with_exit_2(args, message, capsys, tmp_path):
    assert main(["estimate", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("lisa estimate: error: ") and message in line


def test_a_folder_without_config_json_is_refused(tmp_path, capsys):
    assert main(["estimate", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
