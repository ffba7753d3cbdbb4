"""End-to-end tests of `lisa train` on tiny-llama, through the real CLI dispatcher."""

from __future__ import annotations

import json

import numpy as np

from diagnostics.policy import SamplingPolicy
from lisa.layers import LayerMap
from lisa_apps import cli
from lisa_apps.models import load_model

FAST = [
    "--model", "tiny-llama", "--steps", "4", "--train-examples", "12", "--eval-examples", "2",
    "--max-length", "384", "--max-new-tokens", "4", "--no-progress",
]  # fmt: skip


def test_train_lisa_end_to_end_writes_every_file(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        ["train", "--method", "lisa", "--interval", "2", "--gamma", "1", *FAST, "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "before" in printed and "after" in printed
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "log_history.csv", "active_sets.json", "loss_curve.png"} <= names
    assert (out / "model" / "config.json").is_file()  # the trained model, saved by default
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "lisa" and metrics["settings"]["steps"] == 4
    assert (
        metrics["settings"]["lisa"]["interval"] == 2 and metrics["settings"]["lisa"]["gamma"] == 1
    )
    assert [entry["step"] for entry in json.loads((out / "active_sets.json").read_text())] == [0, 2]


def test_train_with_a_policy_uses_its_probabilities(tmp_path):
    model, _ = load_model("tiny-llama")
    layer_map = LayerMap.from_model(model)
    # Only blocks 1 and 3 can ever be drawn.
    policy = SamplingPolicy(
        np.array([0.0, 1.0, 0.0, 1.0]), gamma=2, layer_names=tuple(f"block.{i}" for i in range(4))
    )
    policy.check_compatible(layer_map)
    policy.to_json(tmp_path / "policy.json")
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--policy",
            str(tmp_path / "policy.json"),
            "--interval",
            "1",
            *FAST,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    history = json.loads((out / "active_sets.json").read_text())
    assert len(history) == 4 and all(entry["active_blocks"] == [1, 3] for entry in history)
    lisa = json.loads((out / "metrics.json").read_text())["settings"]["lisa"]
    assert lisa["sampler"] == "weighted"
    assert lisa["sampler_options"]["inclusion_probabilities"] == [0.0, 1.0, 0.0, 1.0]


def test_train_with_a_policy_trains_the_model_the_policy_was_derived_on(diagnosed, tmp_path):
    # No --model: the policy names tiny-llama, so that is what trains (not the default model).
    out = tmp_path / "run"
    argv = ["train", "--policy", str(diagnosed / "policy.json"), *FAST[2:], "--out", str(out)]
    assert cli.main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["model"] == "tiny-llama"


def test_lora_and_ft_runs_save_what_they_trained(tmp_path):
    for method in ("lora", "ft"):
        out = tmp_path / method
        assert cli.main(["train", "--method", method, *FAST, "--steps", "1", "--out", str(out)]) == 0
        saved = {p.name for p in (out / "model").iterdir()}
        assert ("adapter_config.json" in saved) == (method == "lora")
