"""End-to-end tests of `lisa train` on tiny-llama, through the real CLI dispatcher."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diagnostics import cli
from diagnostics.policy import SamplingPolicy
from lisa.layers import LayerMap
from lisa.models import load_model

FAST = [
    "--model", "tiny-llama", "--steps", "4", "--train-examples", "12", "--eval-examples", "2",
    "--max-length", "384", "--max-new-tokens", "4", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    # The lead registers the command in diagnostics/cli.py; make sure it is there either way.
    monkeypatch.setitem(cli.COMMANDS, "train", ("train", "fine-tune with LISA, LoRA or FT"))


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
    assert (
        json.loads((out / "metrics.json").read_text())["settings"]["lisa"]["sampler"] != "uniform"
    )


def test_train_reports_user_errors_without_a_traceback(tmp_path, capsys):
    code = cli.main(
        ["train", "--method", "ft", "--policy", "p.json", *FAST, "--out", str(tmp_path)]
    )
    assert code == 2
    assert "--policy applies to --method lisa only" in capsys.readouterr().err
    code = cli.main(["train", "--model", "no-such-model", "--out", str(tmp_path)])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err
