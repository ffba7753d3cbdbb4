"""Smoke tests: every script in examples/ runs end to end on tiny-llama and writes what it says.

Each example runs as a user would run it, in a subprocess of this interpreter, with a couple of
steps and a temporary --out, so that a renamed library function or a broken default fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Short generation keeps the before/after accuracy scoring of a random tiny model fast.
FAST = ("--model", "tiny-llama", "--steps", "2", "--threads", "1")
GENERATION = ("--eval-examples", "2", "--max-new-tokens", "8")
# Enough for the few steps the tests train (tokenising the default 1,000 costs ~2 s a run).
SMALL = ("--train-examples", "32")


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run examples/<name> with `args`; fail with its output unless it exits 0. Returns stdout."""
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, (
        f"{name} exited {completed.returncode}\n--- stdout\n{completed.stdout}\n"
        f"--- stderr\n{completed.stderr[-4000:]}"
    )
    return completed.stdout


@pytest.fixture(scope="module")
def skew_run(tmp_path_factory) -> tuple[Path, str]:
    """analyse_norm_skew.py once: its norms.csv also feeds the custom policy example."""
    out = tmp_path_factory.mktemp("skew")
    stdout = run_example("analyse_norm_skew.py", *FAST, "--out", str(out), cwd=out)
    return out, stdout


def test_analyse_norm_skew_writes_norms_skew_table_and_figure(skew_run):
    out, stdout = skew_run
    for name in ("norms.csv", "norms.json", "skew.csv", "layer_norms.png", "layer_norms-delta.png"):
        assert (out / name).stat().st_size > 0, name
    norms = pd.read_csv(out / "norms.csv")
    assert set(norms["method"]) == {"lora", "ft"}
    assert set(norms["kind"]) == {"weight", "delta"}
    assert sorted(norms["step"].unique()) == [0, 1, 2]
    skew = pd.read_csv(out / "skew.csv")
    assert {"embed_ratio", "head_ratio", "gini"} <= set(skew.columns)
    assert "embed_ratio" in stdout and "lora probe" in stdout


def test_custom_policy_derives_saves_and_trains_from_analysed_norms(skew_run, tmp_path):
    norms = skew_run[0] / "norms.csv"
    args = ("--norms", str(norms), "--kind", "delta", *GENERATION, "--out", str(tmp_path))
    stdout = run_example("custom_policy.py", *FAST, *SMALL, *args, cwd=tmp_path)
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert policy["gamma"] == 2
    assert sum(policy["inclusion_probabilities"]) == pytest.approx(2.0)
    edited = json.loads((tmp_path / "policy_edited.json").read_text())
    assert edited["inclusion_probabilities"][0] == 0.0  # the hand edit: block 0 never trains
    history = json.loads((tmp_path / "active_sets.json").read_text())
    assert [entry["step"] for entry in history] == [0]
    assert len(history[0]["active_blocks"]) == 2
    for name in ("policy.png", "inclusion.png", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert "held-out loss" in stdout


def test_custom_sampler_is_exact_and_trains_by_name(tmp_path):
    args = ("--draws", "4000", *GENERATION, "--out", str(tmp_path))
    stdout = run_example("custom_sampler.py", *FAST, *SMALL, *args, cwd=tmp_path)
    # tiny-llama: 4 blocks, top = 1 anchor block, so block 3 is in every draw.
    difference = re.search(r"max \|exact - enumerated\| = (\S+);", stdout)
    assert difference is not None and float(difference.group(1)) < 1e-12
    assert "inside the 95% interval" in stdout
    history = json.loads((tmp_path / "active_sets.json").read_text())
    assert 3 in history[0]["active_blocks"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["lisa"]["sampler"] == "top-anchored"
    assert (tmp_path / "inclusion.png").is_file()


def test_trainer_lisa_logs_active_blocks_and_holds_active_state_only(tmp_path):
    args = ("--eval-examples", "2", "--out", str(tmp_path))
    stdout = run_example("trainer_lisa.py", *FAST, *SMALL, *args, cwd=tmp_path)
    logs = pd.read_csv(tmp_path / "log_history.csv")
    steps = logs[logs["loss"].notna()]
    assert steps["step"].tolist() == [1, 2]
    assert steps["lisa_active_blocks"].notna().all()
    memory = pd.read_csv(tmp_path / "memory.csv").set_index("group")
    holding = {
        g
        for g in memory.index
        if g.startswith("block.") and memory.loc[g, "optimizer_state_bytes"] > 0
    }
    assert len(holding) == 2  # gamma blocks, no more
    assert "held-out loss" in stdout


def test_plain_loop_lisa_holds_exactly_the_minimum_state(tmp_path):
    args = ("--steps", "6", "--interval", "2", "--eval-examples", "2", "--out", str(tmp_path))
    stdout = run_example("plain_loop_lisa.py", *FAST, *SMALL, *args, cwd=tmp_path)
    assert "(exactly that)" in stdout
    ft = pd.read_csv(tmp_path / "memory_ft.csv").set_index("group")
    lisa = pd.read_csv(tmp_path / "memory_lisa.csv").set_index("group")
    assert lisa.loc["total", "optimizer_state_bytes"] < ft.loc["total", "optimizer_state_bytes"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [step for step, _ in history] == [0, 2, 4]


def test_compare_methods_prints_one_row_per_method(tmp_path):
    stdout = run_example(
        "compare_methods.py", *FAST, *SMALL, *GENERATION, "--out", str(tmp_path), cwd=tmp_path
    )
    table = pd.read_csv(tmp_path / "comparison.csv").set_index("method")
    assert table.index.tolist() == ["lisa", "lora", "ft"]
    assert table["loss_before"].nunique() == 1  # one starting point for every method
    state = table["optimizer_state_bytes"]
    assert state["lora"] < state["lisa"] < state["ft"]
    for method in ("lisa", "lora", "ft"):
        assert (tmp_path / method / "metrics.json").is_file()
    assert "seconds_per_step" in stdout
