"""`lisa diagnose`, `lisa policy`, `lisa plot` end to end on the tiny random Llama."""

from __future__ import annotations

import argparse
import importlib
import json

import pytest

from diagnostics.cli import COMMANDS
from diagnostics.policy import SamplingPolicy
from diagnostics.recorder import load_norms


def _run(name: str, argv: list[str]) -> int:
    """Through the real `lisa` dispatcher once the command is registered, else the module."""
    if name in COMMANDS:
        from diagnostics.cli import main

        return main([name, *argv])
    module = importlib.import_module(f"diagnostics.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"lisa {name}")
    module.configure(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose")
    code = _run(
        "diagnose",
        [
            "--model",
            "tiny-llama",
            "--steps",
            "3",
            "--out",
            str(out),
            "--num-examples",
            "24",
            "--max-length",
            "256",
            "--kinds",
            "weight,delta",
            "--no-progress",
            "--gamma",
            "2",
        ],
    )
    assert code == 0
    return out


def test_diagnose_writes_every_file(diagnosed, capsys):
    names = {p.name for p in diagnosed.iterdir()}
    assert names == {
        "norms.csv",
        "norms.json",
        "skew.csv",
        "policy.json",
        "layer_norms.png",
        "norm_heatmap.png",
        "policy.png",
        "layer_norms-delta.png",
    }
    table = load_norms(diagnosed)
    assert set(table["method"]) == {"lora", "ft"}
    assert sorted(table["step"].unique()) == [0, 1, 2, 3]
    sidecar = json.loads((diagnosed / "norms.json").read_text())
    assert set(sidecar["probes"]) == {"lora", "ft"} and sidecar["num_blocks"] == 4
    policy = SamplingPolicy.from_json(diagnosed / "policy.json")
    assert policy.gamma == 2 and policy.num_blocks == 4
    from lisa.models import load_model

    policy.check_compatible(load_model("tiny-llama")[0])


def test_policy_command_derives_from_saved_norms(diagnosed, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert (
        _run(
            "policy",
            [
                "--norms",
                str(diagnosed / "norms.csv"),
                "--gamma",
                "1",
                "--kind",
                "delta",
                "--floor",
                "0.1",
                "--out",
                str(out),
            ],
        )
        == 0
    )
    policy = SamplingPolicy.from_json(out)
    assert policy.gamma == 1 and policy.inclusion_probabilities.min() >= 0.1 - 1e-12
    assert policy.provenance["kind"] == "delta"
    assert "inclusion probabilities" in capsys.readouterr().out


def test_policy_command_refuses_missing_method(diagnosed, tmp_path, capsys):
    code = _run(
        "policy",
        [
            "--norms",
            str(diagnosed / "norms.csv"),
            "--gamma",
            "1",
            "--ft-method",
            "full",
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert code == 2 and "no rows of method 'full'" in capsys.readouterr().out


def test_plot_command_redraws_from_files(diagnosed, tmp_path):
    history = tmp_path / "history.json"
    history.write_text(json.dumps([[0, [0, 1]], [5, [2, 3]], [10, [1, 2]]]))
    out = tmp_path / "plots"
    assert (
        _run(
            "plot",
            [
                "--norms",
                str(diagnosed / "norms.csv"),
                "--policy",
                str(diagnosed / "policy.json"),
                "--history",
                str(history),
                "--out",
                str(out),
            ],
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "layer_norms.png",
        "norm_heatmap.png",
        "policy.png",
        "inclusion.png",
    }


def test_plot_command_needs_policy_for_history(tmp_path, capsys):
    assert _run("plot", ["--history", "h.json", "--norms", "n.csv", "--out", str(tmp_path)]) == 2
