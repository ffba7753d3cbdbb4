"""`lisa train --report-to wandb`: each step's loss and LISA's blocks reach the wandb run.

Both paths: the Trainer's (``WandbCallback``) and the FSDP2 loop's (``WandbWriter``, here with
TensorBoard's writer beside it). wandb is an optional extra (``lisa-finetune[track]``, also in
``dev``), so the tests skip only where it is not installed. Each run is offline
(``WANDB_MODE=offline``) into the test's own folder and is read back with wandb's own reader of
its transaction log (``wandb leet inspect --json``). The Trainer's TensorBoard:
tests/lisa_apps/test_schedule.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lisa_apps import cli
from lisa_apps.training.tracking import TENSORBOARD_FOLDER

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


def _train_offline(tmp_path, monkeypatch, *flags: str) -> tuple[pd.DataFrame, list[dict]]:
    """Run `lisa train` in this process with wandb offline; (log_history rows, wandb steps)."""
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-files"))
    (tmp_path / "wandb-files").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    threads = torch.get_num_threads()
    try:
        assert cli.main([*RUN, *flags, "--out", str(tmp_path / "run")]) == 0
        # Each finetune call finishes the run it started (so the log is complete), on both paths.
        assert wandb.run is None
    finally:
        torch.set_num_threads(threads)  # --threads 1 set it for the process
        wandb.finish()  # a no-op unless the run above was left open
        wandb.teardown()  # wandb reads WANDB_DIR once a process: the next test sets another
    logged = pd.read_csv(tmp_path / "run" / "log_history.csv").dropna(subset=["loss"])
    steps = [row for row in _wandb_history(tmp_path / "wandb-files") if "train/loss" in row]
    return logged, steps


def _same_rows(logged: pd.DataFrame, steps: list[dict]) -> None:
    assert [row["train/global_step"] for row in steps] == logged["step"].tolist() == [1, 2, 3]
    # The same floats and strings as log_history.csv: every row carries the loss and the
    # blocks trained at that step.
    assert [row["train/loss"] for row in steps] == logged["loss"].tolist()
    blocks = [row["train/lisa_active_blocks"] for row in steps]
    assert blocks == logged["lisa_active_blocks"].astype(str).tolist()
    assert all(block.isdigit() for block in blocks)  # --gamma 1: one block index each step


def test_report_to_wandb_logs_each_steps_loss_and_active_blocks(tmp_path, monkeypatch):
    # Through the Trainer's WandbCallback; LisaCallback runs before it, so it sees LISA's keys.
    _same_rows(*_train_offline(tmp_path, monkeypatch, "--report-to", "wandb"))


def test_fsdp2_loop_reports_to_wandb_and_tensorboard_with_the_same_tags(tmp_path, monkeypatch):
    # One rank under `--distributed fsdp2`, as torchrun would start it: the plain loop's writers.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launched = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port)}  # fmt: skip
    for name, value in launched.items():
        monkeypatch.setenv(name, value)
    flags = ["--distributed", "fsdp2", "--report-to", "tensorboard,wandb"]
    logged, steps = _train_offline(tmp_path, monkeypatch, *flags)
    _same_rows(logged, steps)
    assert all("train/learning_rate" in row and "train/grad_norm" in row for row in steps)
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD_FOLDER)).Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    assert losses == pytest.approx(logged["loss"].tolist())  # TensorBoard stores float32


def test_a_run_the_caller_opened_is_used_and_left_open(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lisa_apps.data import make_math_problems
    from lisa_apps.models import load_model
    from lisa_apps.training import FinetuneConfig, finetune
    from lisa_apps.training.tracking import WandbWriter

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="caller")
    try:
        model, tokenizer = load_model("tiny-llama")
        config = FinetuneConfig(
            steps=2, batch_size=2, max_length=256, score_accuracy=False, report_to=("wandb",)
        )
        finetune(model, tokenizer, make_math_problems(4), [], config, progress=False,
                 evaluate_before=False)  # fmt: skip
        writer = WandbWriter()  # the FSDP2 loop's writer
        writer.log({"step": 3, "loss": 1.5})
        writer.close()
        assert wandb.run is run  # neither path finished it
    finally:
        run.finish()
        wandb.teardown()
    history = [row for row in _wandb_history(tmp_path) if "train/loss" in row]
    assert [row["train/global_step"] for row in history] == [1, 2, 3]
