"""`lisa train --distributed ddp --save-steps`: a 2-rank run killed with SIGKILL and resumed.

Three ``torchrun --nproc_per_node 2`` runs of 4 steps on the tiny Llama (gloo, CPU): one not
stopped; one killed with SIGKILL (torchrun and both ranks) while both ranks are in step 3
(checkpoint-2 written, checkpoint-4 not yet); and that one resumed with ``--resume auto``. The
resumed run must log the same losses, take the same LISA draws on both ranks and end with the
same weights as the run that was not stopped. Each rank is the `lisa` entry point run through
a small launcher that writes the rank's draws at the end of training and, in the killed run,
writes a file when step 3 begins and then waits there to be killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lisa_apps.outputs import MANIFEST
from lisa_apps.training.checkpoints import latest_checkpoint
from tests.lisa_apps.commands.test_distributed_commands import (
    WORLD,
    _one_set_of_results,
    kill_torchrun,
    torchrun,
    torchrun_command,
)

TRAIN = [
    "train", "--distributed", "ddp", "--model", "tiny-llama", "--steps", "4",
    "--save-steps", "2", "--save-total-limit", "1", "--interval", "2", "--gamma", "1",
    "--batch-size", "4", "--train-examples", "16", "--eval-examples", "1",
    "--max-length", "256", "--no-accuracy", "--skip-before", "--no-progress", "--threads", "1",
    "--lr-scheduler", "linear", "--warmup-steps", "1", "--no-save-model", "--seed", "0",
]  # fmt: skip
STEPS, STOP_AT = 4, 2  # killed once 2 steps are done: during step 3, after checkpoint-2

# Each rank runs `lisa` (lisa_apps.cli.main) with LisaCallback wrapped: at the end of training
# it writes the rank's draws; with STOP_AT set, the rank writes a file when that many steps are
# done and sleeps until the test kills it.
LAUNCHER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from lisa.callback import LisaCallback

    markers, rank = Path(os.environ["LISA_TEST_MARKERS"]), os.environ["RANK"]
    stop_at = int(os.environ.get("LISA_TEST_STOP_AT", "-1"))
    begin, end = LisaCallback.on_step_begin, LisaCallback.on_train_end

    def on_step_begin(self, args, state, control, **kwargs):
        begin(self, args, state, control, **kwargs)
        if state.global_step == stop_at:
            written = markers / f"rank-{rank}.pid"
            written.write_text(str(os.getpid()))
            written.rename(markers / f"step-{stop_at}-rank-{rank}")  # complete when seen
            time.sleep(120)

    def on_train_end(self, args, state, control, **kwargs):
        draws = [[step, list(blocks)] for step, blocks in self.lisa.history]
        (markers / f"draws-rank-{rank}.json").write_text(json.dumps(draws))
        return end(self, args, state, control, **kwargs)

    LisaCallback.on_step_begin, LisaCallback.on_train_end = on_step_begin, on_train_end
    from lisa_apps.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _draws(markers) -> list:
    per_rank = [json.loads((markers / f"draws-rank-{r}.json").read_text()) for r in range(WORLD)]
    assert all(draws == per_rank[0] for draws in per_rank), per_rank  # every rank drew the same
    return per_rank[0]


def _kill_during_step(launcher, markers, out) -> None:
    """Start the run in its own process group; SIGKILL the group once every rank is waiting."""
    env = os.environ | {"LISA_TEST_MARKERS": str(markers), "LISA_TEST_STOP_AT": str(STOP_AT)}
    process = subprocess.Popen(
        torchrun_command(*TRAIN, "--out", str(out), script=str(launcher)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    waiting = [markers / f"step-{STOP_AT}-rank-{r}" for r in range(WORLD)]
    deadline = time.monotonic() + 240
    while not all(path.exists() for path in waiting):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            _, error = process.communicate()
            pytest.fail(f"the run did not reach step {STOP_AT + 1}: {error.decode()[-3000:]}")
        time.sleep(0.2)
    kill_torchrun(process, [int(path.read_text()) for path in waiting])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(uninterrupted run, its markers, killed-and-resumed run, its markers)."""
    root = tmp_path_factory.mktemp("ddp-resume")
    launcher = root / "launch_lisa.py"
    launcher.write_text(LAUNCHER)
    whole, whole_markers = root / "whole", root / "whole-markers"
    killed, killed_markers = root / "killed", root / "killed-markers"
    whole_markers.mkdir(), killed_markers.mkdir()
    env = {"LISA_TEST_MARKERS": str(whole_markers)}
    whole_stdout = torchrun(*TRAIN, "--out", str(whole), script=str(launcher), env=env).stdout
    _kill_during_step(launcher, killed_markers, killed)
    # The state the kill left: checkpoint-2 complete, no results, the manifest still "running".
    assert latest_checkpoint(killed).name == "checkpoint-2"
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / MANIFEST).read_text())["status"] == "running"
    env = {"LISA_TEST_MARKERS": str(killed_markers)}
    torchrun(*TRAIN, "--out", str(killed), "--resume", "auto", script=str(launcher), env=env)
    return whole, whole_markers, killed, killed_markers, whole_stdout


def test_the_uninterrupted_ddp_run_writes_one_set_of_results(runs):
    whole, stdout = runs[0], runs[4]
    _one_set_of_results(whole)
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["num_switches"] == 2
    assert all(f"rank {r}: peak memory" in stdout for r in range(WORLD))


def test_ddp_run_killed_during_step_3_and_resumed_equals_the_uninterrupted_run(runs):
    whole, whole_markers, killed, killed_markers, _ = runs
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 2 and metrics["resumed_from"].endswith("checkpoint-2")
    assert metrics["world_size"] == WORLD
    manifest = json.loads((killed / MANIFEST).read_text())
    assert manifest["status"] == "finished" and f"checkpoint-{STEPS}" in manifest["files"]
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == [f"checkpoint-{STEPS}"]

    # The draws: the same on every rank, and the resumed run's equal the uninterrupted run's,
    # the one at step 2 taken after the restart from the restored generator.
    draws = _draws(whole_markers)
    assert _draws(killed_markers) == draws and [step for step, _ in draws] == [0, 2]
    assert json.loads((killed / "active_sets.json").read_text()) == json.loads(
        (whole / "active_sets.json").read_text()
    )
    # Losses and weights are compared exactly: on one machine and one kernel set each resumed
    # rank repeats its uninterrupted twin's arithmetic (the same slices of the same batches,
    # weights, optimizer and RNG state restored bit for bit), and DDP's all-reduce of two
    # terms gives the same sum in either order, so nothing differs by even one rounding.
    resumed, reference = (
        pd.read_csv(o / "log_history.csv").dropna(subset=["loss"]) for o in (killed, whole)
    )
    assert resumed["step"].tolist() == reference["step"].tolist() == list(range(1, STEPS + 1))
    assert resumed["lisa_active_blocks"].tolist() == reference["lisa_active_blocks"].tolist()
    assert resumed["learning_rate"].tolist() == reference["learning_rate"].tolist()
    assert resumed["loss"].tolist() == reference["loss"].tolist()
    final = load_file(killed / f"checkpoint-{STEPS}" / "model.safetensors")
    for name, tensor in load_file(whole / f"checkpoint-{STEPS}" / "model.safetensors").items():
        assert torch.equal(final[name], tensor), name
