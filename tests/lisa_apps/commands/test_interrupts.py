"""Ctrl-C during a long command: one line saying what was kept, exit 130, finished work kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lisa_apps.cli import main
from lisa_apps.outputs import MANIFEST, RunFolder

LISA = [sys.executable, "-c", "import sys; from lisa_apps.cli import main; sys.exit(main())"]


def test_ctrl_c_during_diagnose_keeps_the_norms_recorded_so_far(tmp_path):
    out = tmp_path / "diag"
    command = [*LISA, "diagnose", "--model", "tiny-llama", "--steps", "100000", "--num-examples",
               "8", "--max-length", "384", "--no-progress", "--out", str(out), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    streamed = out / "norms-lora.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the LoRA probe has recorded a few steps
        if streamed.exists() and streamed.read_text().count("\n") > 20:
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the LoRA probe never streamed its rows")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lisa diagnose: interrupted; kept in ") and "norms-lora.csv" in last
    assert streamed.read_text().count("\n") > 20  # what was recorded is still there
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and "norms-lora.csv" in manifest["files"]


def test_ctrl_c_after_training_keeps_the_trained_model(tmp_path, monkeypatch, capsys):
    import lisa_apps.training.runner as runner

    calls = []
    real_evaluate = runner.evaluate

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(kwargs.get("label"))
        if kwargs.get("label") == "after":  # the user presses Ctrl-C during the last evaluation
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate_then_interrupt)
    earlier = RunFolder(tmp_path / "earlier", command="study")  # an API run interrupted before,
    with pytest.raises(KeyboardInterrupt), earlier:  # in the same process: not this command's
        raise KeyboardInterrupt
    out = tmp_path / "run"
    argv = ["train", "--model", "tiny-llama", "--steps", "2", "--train-examples", "4",
            "--eval-examples", "1", "--max-length", "384", "--no-accuracy", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 130
    assert calls == ["before", "after"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"lisa train: interrupted; kept in {out}: recipe.yaml, model"
    assert (out / "model" / "config.json").is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "interrupted" and manifest["files"] == ["recipe.yaml", "model"]


def test_ctrl_c_while_checking_inputs_writes_nothing(tmp_path, monkeypatch, capsys):
    import lisa_apps.models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lisa_apps.models, "inspect_model", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-llama", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == (
        "lisa train: interrupted before any work; nothing was written"
    )
    assert not out.exists()
    assert Path(os.getcwd())  # the process is still usable
