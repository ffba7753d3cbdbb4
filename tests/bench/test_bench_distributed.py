"""Smoke test of bench.distributed --quick: 2 gloo ranks, exact per-rank byte counts.

--same-processes runs every setting in one pair of ranks (one start-up instead of five); the
byte counts checked here do not depend on it, only the peaks would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_distributed_quick_prints_per_rank_bytes(tmp_path):
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.distributed", "--quick", "--nproc", "2", "--steps", "6",
         "--same-processes", "--skip-find-unused-cost", "--json-out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| fsdp2-lisa | 1 |" in completed.stdout
    ranks = json.loads(out.read_text())["ranks"]
    assert len(ranks) == 2
    for per_rank in ranks:
        figures = {f["label"]: f for f in per_rank}
        ddp_ft, ddp_lisa = figures["ddp-ft"], figures["ddp-lisa"]
        # DDP: every parameter registered at wrap time has a bucket slot, LISA or not.
        assert ddp_ft["ddp_bucket_bytes"] == ddp_ft["parameter_bytes"]
        assert ddp_lisa["ddp_bucket_bytes"] == ddp_ft["parameter_bytes"]
        assert ddp_lisa["grad_bytes"] < ddp_ft["grad_bytes"]
        assert ddp_lisa["optimizer_state_bytes"] < ddp_ft["optimizer_state_bytes"]
        # FSDP2: about half of each tensor per rank (dim-0 shards, padded), no buckets.
        fsdp2_ft, fsdp2_lisa = figures["fsdp2-ft"], figures["fsdp2-lisa"]
        assert fsdp2_ft["ddp_bucket_bytes"] == 0
        assert abs(fsdp2_ft["parameter_bytes"] / ddp_ft["parameter_bytes"] - 0.5) < 0.01
        assert abs(fsdp2_ft["optimizer_state_bytes"] / ddp_ft["optimizer_state_bytes"] - 0.5) < 0.01
        assert fsdp2_lisa["grad_bytes"] < fsdp2_ft["grad_bytes"]
