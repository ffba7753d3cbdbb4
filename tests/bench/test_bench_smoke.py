"""Smoke tests of the benchmark scripts: their --quick modes run and print sane tables.

Each script runs once per module as a subprocess (as a user would run it) on the tiny 4-block
model; the tests then read its stdout and JSON. Timings are not judged here (too noisy on a
shared CPU); byte counts are exact, so they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
QUICK_LABELS = [
    "ft",
    "lora-r8",
    "lora-r128",
    "lisa-g2-drop",
    "lisa-g2-reset",
    "lisa-g2-keep",
    "static-g2",
    "lmflow-g2",
    "badam",
]


def _run(script: str, tmp_path_factory, *extra: str) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp(script.removesuffix(".py")) / "result.json"
    module = f"bench.{script.removesuffix('.py')}"
    completed = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json-out", str(out), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, json.loads(out.read_text())


@pytest.fixture(scope="module")
def memory_time(tmp_path_factory):
    # In one interpreter: nine fresh ones cost ~90 s of imports; the bytes checked are the same.
    return _run("memory_time.py", tmp_path_factory, "--in-process")


@pytest.fixture(scope="module")
def scaling(tmp_path_factory):
    return _run("scaling.py", tmp_path_factory)


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    return _run("recorder_overhead.py", tmp_path_factory)


def test_memory_time_prints_every_table_and_method(memory_time):
    stdout, payload = memory_time
    assert list(payload["results"]) == QUICK_LABELS
    for heading in ("## Step time and memory", "## Optimizer state, exact bytes", "## Targets"):
        assert heading in stdout
    table_rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    for label in QUICK_LABELS:
        # One row per method in each of the two per-method tables.
        assert sum(row.startswith(f"| {label} |") for row in table_rows) >= 2, label


def test_lisa_state_equals_minimum_after_every_step(memory_time):
    results = memory_time[1]["results"]
    for label in ("lisa-g2-drop", "lisa-g2-reset"):
        trace = results[label]["trace"]
        assert len({tuple(row["active_blocks"]) for row in trace}) > 1, "no switch happened"
        assert all(row["state_bytes"] == row["minimum_state_bytes"] for row in trace), label
        assert results[label]["state_over_minimum_max"] == 1.0


def test_keep_and_lmflow_hold_more_state_than_drop(memory_time):
    results = memory_time[1]["results"]
    drop = results["lisa-g2-drop"]["max_state_bytes"]
    assert results["lisa-g2-keep"]["max_state_bytes"] > drop
    assert results["lmflow-g2"]["max_state_bytes"] > drop
    assert results["lmflow-g2"]["state_over_minimum_max"] > 1.0


def test_minimum_is_two_moments_of_the_grads_plus_step_scalars(memory_time):
    # At the end every trained tensor holds a grad of its own size, so AdamW's minimum
    # (exp_avg + exp_avg_sq + a float32 step each) follows from the grad bytes alone.
    results = memory_time[1]["results"]
    for label in ("ft", "lora-r8", "lisa-g2-drop", "static-g2"):
        r = results[label]
        assert r["minimum_state_bytes"] == 2 * r["grad_bytes"] + 4 * r["trained_tensor_count"], (
            label
        )
    ft = results["ft"]
    assert ft["grad_bytes"] == ft["parameter_bytes"]


def test_method_relations_hold(memory_time):
    results = memory_time[1]["results"]
    ft_state = results["ft"]["optimizer_state_bytes"]
    assert (
        results["lora-r8"]["optimizer_state_bytes"] < results["lora-r128"]["optimizer_state_bytes"]
    )
    assert results["lisa-g2-drop"]["optimizer_state_bytes"] < ft_state
    # Static freeze trains LISA's first draw, so it holds LISA's minimum.
    assert (
        results["static-g2"]["settings"]["blocks"]
        == results["lisa-g2-drop"]["trace"][0]["active_blocks"]
    )
    assert (
        results["static-g2"]["optimizer_state_bytes"]
        == results["lisa-g2-drop"]["minimum_state_bytes"]
    )
    # BAdam frees all state at each switch and trains float32 master copies of its active set.
    badam = results["badam"]
    assert badam["state_over_minimum_max"] == 1.0
    assert badam["extra_bytes"] > 0
    for r in results.values():
        assert r["median_step_seconds"] > 0
        assert r["median_wall_seconds"] > 0
        # One process for all methods (--in-process): the resident set is the process's, so
        # only its presence is checked, not its relation to the method's start.
        assert r["peak_rss_bytes"] > 0 and r["rss_before_method_bytes"] > 0


def test_scaling_ft_grows_linearly_and_lisa_stays_flat(scaling):
    stdout, payload = scaling
    rows = payload["rows"]
    assert [row["blocks"] for row in rows] == [2, 4, 8]
    ft = [row["ft"]["max_state_bytes"] for row in rows]
    # Blocks are identical, so FT state is affine in the block count: 2->4 adds half of 4->8.
    assert ft[2] - ft[1] == 2 * (ft[1] - ft[0]) > 0
    drop = [row["lisa-drop"]["max_state_bytes"] for row in rows]
    assert len(set(drop)) == 1
    assert all(
        row["lisa-drop"]["max_state_bytes"] == row["lisa-drop"]["minimum_state_bytes"]
        for row in rows
    )
    assert rows[-1]["lisa-keep"]["max_state_bytes"] > drop[-1]
    assert "| 8 |" in stdout


def test_recorder_overhead_reports_every_method_and_recorder(recorder):
    stdout, payload = recorder
    results = {r["method"]: r for r in payload["results"]}
    assert set(results) == {"ft", "lora-r8", "lisa-g2"}
    for r in results.values():
        assert set(r["recorders"]) == {"weight/l2", "all"}
        # embed, 4 blocks, head, extras: one row per group for one kind and one reduction.
        assert r["recorders"]["weight/l2"]["rows_per_record"] == 7
        assert r["recorders"]["weight/l2"]["overhead"]["wall"] > 0
    assert "recording weight/l2 norms every step" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the guard on machines without CUDA")
def test_cuda_request_without_cuda_fails_clearly(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.workload",
            "--method",
            "ft",
            "--quick",
            "--device",
            "cuda",
            "--result-file",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "torch.cuda.is_available() is False" in completed.stderr
