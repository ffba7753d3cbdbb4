"""`lisa train --save-steps` writes Trainer checkpoints with LISA's schedule; `--resume` continues
a run killed with SIGKILL to the same losses, draws and weights as the run that was not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lisa_apps import cli
from lisa_apps.outputs import MANIFEST, RunFolder
from lisa_apps.training.checkpoints import latest_checkpoint

RUN = [
    "train", "--model", "tiny-llama", "--steps", "6", "--save-steps", "2",
    "--save-total-limit", "1", "--interval", "2", "--gamma", "1", "--batch-size", "2",
    "--train-examples", "8", "--eval-examples", "1", "--max-length", "256", "--no-accuracy",
    "--skip-before", "--no-progress", "--threads", "1", "--lr-scheduler", "linear",
    "--warmup-steps", "1", "--no-save-model",
]  # fmt: skip

# Runs `lisa train` and kills itself with SIGKILL when step 4 begins (after LISA's engine has
# taken the step), i.e. after checkpoint-2 was written and before checkpoint-4 is.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from lisa.callback import LisaCallback
    begin = LisaCallback.on_step_begin
    def on_step_begin(self, args, state, control, **kwargs):
        begin(self, args, state, control, **kwargs)
        if state.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    LisaCallback.on_step_begin = on_step_begin
    from lisa_apps.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture
def one_thread():
    """--threads 1 sets torch's thread count for the process; put it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _losses(out) -> list[float]:
    history = pd.read_csv(out / "log_history.csv")
    return history.dropna(subset=["loss"])["loss"].tolist()


def test_a_killed_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(
    tmp_path, one_thread
):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main([*RUN, "--out", str(whole)]) == 0

    process = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *RUN, "--out", str(killed)],
        capture_output=True, text=True, timeout=300, env=os.environ | {"TQDM_DISABLE": "1"},
    )  # fmt: skip
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    assert latest_checkpoint(killed).name == "checkpoint-2"
    assert not (killed / "metrics.json").exists()
    assert json.loads((killed / MANIFEST).read_text())["status"] == "running"  # died mid-run

    assert cli.main([*RUN, "--out", str(killed), "--resume", "auto"]) == 0
    # Exactly equal in one process: same weights, optimizer, scheduler, RNG and data position.
    assert _losses(killed) == _losses(whole) and len(_losses(whole)) == 6
    draws = json.loads((whole / "active_sets.json").read_text())
    assert json.loads((killed / "active_sets.json").read_text()) == draws
    assert [entry["step"] for entry in draws] == [0, 2, 4]
    # The final weights: both runs' last checkpoint (the newest one is kept).
    resumed = load_file(killed / "checkpoint-6" / "model.safetensors")
    for name, tensor in load_file(whole / "checkpoint-6" / "model.safetensors").items():
        assert torch.equal(resumed[name], tensor), name
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 2 and metrics["resumed_from"].endswith("checkpoint-2")
    # The newest checkpoint replaced the one resumed from (save_total_limit 1), and the
    # manifest lists both runs' files.
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-6"]
    manifest = json.loads((killed / MANIFEST).read_text())
    assert manifest["status"] == "finished" and "checkpoint-6" in manifest["files"]
    # A finished run lists what it kept: the checkpoints the rotation removed are not listed.
    for out in (whole, killed):
        listed = json.loads((out / MANIFEST).read_text())["files"]
        assert [name for name in listed if name.startswith("checkpoint-")] == ["checkpoint-6"]
        assert all((out / name).exists() for name in listed), out


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        ("empty-run", ["--resume", "auto"], "holds no checkpoint-N folder to resume from"),
        ("diagnose-run", ["--resume", "auto"], "holds a run of `lisa diagnose`, not `lisa train`"),
        ("train-run", ["--resume", "auto", "--model", "tiny-gpt2"], "trained --model tiny-llama"),
        ("train-run", ["--resume", "auto", "--overwrite"], "--resume continues the run"),
        ("train-run", ["--resume", "nowhere"], "--resume nowhere is not a Trainer checkpoint"),
    ],
)
def test_resume_refuses_another_run_or_nothing_to_resume_with_one_line(
    setup, flags, message, tmp_path, capsys
):
    out = tmp_path / "run"
    command = "lisa diagnose" if setup == "diagnose-run" else "lisa train"
    with RunFolder(out, command=command, arguments={"model": "tiny-llama", "method": "lisa"}):
        pass
    if setup != "empty-run":
        checkpoint = out / "checkpoint-2"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    before = sorted(p.name for p in out.iterdir())
    model = [] if "--model" in flags else ["--model", "tiny-llama"]
    code = cli.main(["train", *model, "--out", str(out), *flags])
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_fsdp2_run_refuses_to_resume_a_trainer_checkpoint(tmp_path, monkeypatch, capsys):
    # FSDP2 checkpoints themselves: tests/lisa_apps/test_fsdp2_checkpoint.py.
    launched = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}  # fmt: skip
    for name, value in launched.items():  # as torchrun starts each rank
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    with RunFolder(out, command="lisa train", arguments={"model": "tiny-llama", "method": "lisa"}):
        pass
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    before = sorted(p.name for p in out.iterdir())
    argv = ["train", "--model", "tiny-llama", "--distributed", "fsdp2", "--resume", "auto",
            "--out", str(out)]  # fmt: skip
    code = cli.main(argv)
    error = capsys.readouterr().err
    assert code == 2 and "is a Trainer checkpoint" in error, error
    assert len(error.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_resume_refuses_a_run_that_is_still_writing(tmp_path, capsys):
    from lisa_apps.folder_lock import FolderLock

    out = tmp_path / "run"
    with RunFolder(out, command="lisa train", arguments={"model": "tiny-llama", "method": "lisa"}):
        pass
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    lock = FolderLock(out, command="lisa train").acquire()  # the first run, still training
    try:
        code = cli.main(["train", "--model", "tiny-llama", "--out", str(out), "--resume", "auto"])
    finally:
        lock.release()
    error = capsys.readouterr().err
    assert code == 2 and "is being written by pid" in error, error
