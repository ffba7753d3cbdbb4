"""`lisa train --report-to wandb`: the Trainer's WandbCallback logs the loss and LISA's blocks.

wandb is an optional extra (``lisa-finetune[track]``, also in ``dev``), so this test skips only
where it is not installed. The run is offline (``WANDB_MODE=offline``) into the test's own
folder, and is read back with wandb's own reader of its transaction log
(``wandb leet inspect --json``). TensorBoard: tests/lisa_apps/test_schedule.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lisa_apps import cli

RUN = [
    "train", "--model", "tiny-llama", "--steps", "3", "--interval", "2", "--gamma", "1",
    "--batch-size", "2", "--train-examples", "6", "--eval-examples", "1", "--max-length", "256",
    "--no-accuracy", "--skip-before", "--no-progress", "--threads", "1", "--no-save-model",
]  # fmt: skip


def _wandb_history(wandb_dir: Path) -> list[dict]:
    """The history rows of the one offline run under ``wandb_dir``, as wandb itself reads them."""
    (log,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    command = shutil.which("wandb", path=str(Path(sys.executable).parent))
    listed = subprocess.run(
        [command, "leet", "inspect", "--json", str(log)], capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    return [record["history"]["item"] for record in records if record["type"] == "history"]


def test_report_to_wandb_logs_each_steps_loss_and_active_blocks(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-files"))
    (tmp_path / "wandb-files").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    try:
        assert cli.main([*RUN, "--report-to", "wandb", "--out", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for the process
        wandb.finish()  # the Trainer leaves its run open; close it (and flush the log) here

    logged = pd.read_csv(tmp_path / "run" / "log_history.csv").dropna(subset=["loss"])
    steps = [row for row in _wandb_history(tmp_path / "wandb-files") if "train/loss" in row]
    assert [row["train/global_step"] for row in steps] == logged["step"].tolist() == [1, 2, 3]
    # The same floats and strings as log_history.csv, through the Trainer's WandbCallback:
    # LisaCallback runs before it, so every row carries the blocks trained at that step.
    assert [row["train/loss"] for row in steps] == logged["loss"].tolist()
    blocks = [row["train/lisa_active_blocks"] for row in steps]
    assert blocks == logged["lisa_active_blocks"].astype(str).tolist()
    assert all(block.isdigit() for block in blocks)  # --gamma 1: one block index each step
