"""`--overwrite` never loses the earlier run: it is swapped out only when the new run finished.

A rerun that fails or is interrupted at any moment (loading, training, evaluation, writing),
by an exception, Ctrl-C or SIGKILL, leaves the earlier run byte for byte; a second writer is
refused while the first holds the folder; a run of another command is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lisa_apps.cli import main
from lisa_apps.folder_lock import LOCK
from lisa_apps.outputs import MANIFEST

LISA = [sys.executable, "-c", "import sys; from lisa_apps.cli import main; sys.exit(main())"]
TRAIN = ["train", "--model", "tiny-llama", "--train-examples", "4", "--eval-examples", "1",
         "--max-length", "384", "--no-accuracy", "--no-progress", "--threads", "1"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (a stale lock is not part of a run)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("first") / "run"
    assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def earlier(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _fail_in_load(monkeypatch, error):
    import lisa_apps.models

    def load(*args, **kwargs):
        raise error

    monkeypatch.setattr(lisa_apps.models, "load_model", load)


def _fail_in_training(monkeypatch, error):
    from lisa.engine import Lisa

    real = Lisa.begin_step

    def begin_step(self, *args, **kwargs):
        if self.history:  # the second step
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Lisa, "begin_step", begin_step)


def _fail_in_evaluation(monkeypatch, error):
    import lisa_apps.training.runner as runner

    real = runner.evaluate

    def evaluate(*args, **kwargs):
        if kwargs.get("label") == "after":
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate)


def _fail_in_writing(monkeypatch, error):
    import lisa_apps.training.runner as runner

    def write_run(*args, **kwargs):
        raise error

    monkeypatch.setattr(runner, "write_run", write_run)


MOMENTS = {
    "load": _fail_in_load,
    "training": _fail_in_training,
    "evaluation": _fail_in_evaluation,
    "writing": _fail_in_writing,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "failure"])
def test_an_overwrite_rerun_that_stops_leaves_the_earlier_run_byte_identical(
    earlier, monkeypatch, capsys, moment, error
):
    before = snapshot(earlier)
    MOMENTS[moment](monkeypatch, error("stopped here"))
    argv = [*TRAIN, "--steps", "3", "--out", str(earlier), "--overwrite"]
    if error is KeyboardInterrupt:
        assert main(argv) == 130
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"the earlier run in {earlier} is untouched" in last
    else:
        with pytest.raises(RuntimeError, match="stopped here"):
            main(argv)
    assert snapshot(earlier) == before
    assert not (earlier / LOCK).exists()
    (incomplete,) = earlier.parent.glob("run.incomplete-*")
    status = json.loads((incomplete / MANIFEST).read_text())["status"]
    assert status == ("interrupted" if error is KeyboardInterrupt else "failed")


def test_a_finished_overwrite_replaces_the_run_whole_and_keeps_the_users_own_files(earlier):
    (earlier / "notes.txt").write_text("the user's own")
    old_metrics = (earlier / "metrics.json").read_bytes()
    assert main([*TRAIN, "--steps", "3", "--out", str(earlier), "--overwrite"]) == 0
    assert json.loads((earlier / "metrics.json").read_bytes())["settings"]["steps"] == 3
    assert (earlier / "metrics.json").read_bytes() != old_metrics
    assert (earlier / "notes.txt").read_text() == "the user's own"
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["run"]  # nothing left beside it
    assert json.loads((earlier / MANIFEST).read_text())["status"] == "finished"


@pytest.mark.parametrize(
    ("command", "writer"),
    [
        (["plot", "--norms", "NORMS"], "lisa train"),
        (["policy", "--norms", "NORMS", "--gamma", "2"], None),
    ],
    ids=["plot over a train run", "policy over a data file"],
)
def test_overwrite_never_replaces_what_another_command_or_the_user_wrote(
    earlier, tmp_path, capsys, command, writer
):
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    target = earlier if writer else data
    before = snapshot(earlier) if writer else data.read_bytes()
    argv = [str(tmp_path / "missing.csv") if a == "NORMS" else a for a in command]
    assert main([*argv, "--out", str(target), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    if writer:
        assert f"holds a run of `{writer}`" in err[0]
        assert snapshot(earlier) == before
    else:
        assert "not a policy written by lisa" in err[0]
        assert data.read_bytes() == before


def _wait_for(predicate, process, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"timed out waiting for {what}")


def _long_overwrite(out: Path) -> subprocess.Popen:
    command = [*LISA, *TRAIN, "--steps", "100000", "--skip-before", "--out", str(out),
               "--overwrite"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _training(out: Path) -> bool:
    staging = next(out.parent.glob(f"{out.name}.in-progress-*"), None)
    return staging is not None and (out / LOCK).is_file() and (staging / MANIFEST).is_file()


def test_a_second_writer_is_refused_and_ctrl_c_of_the_first_keeps_the_earlier_run(earlier):
    before = snapshot(earlier)
    first = _long_overwrite(earlier)
    try:
        _wait_for(lambda: _training(earlier), first, "the first run to hold the folder")
        second = subprocess.run(
            [*LISA, *TRAIN, "--steps", "2", "--out", str(earlier), "--overwrite"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is being written by pid {first.pid}" in lines[0]
        time.sleep(1.0)  # let the first run get into its training steps
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    assert "is untouched" in stderr.strip().splitlines()[-1]
    assert snapshot(earlier) == before
    assert not (earlier / LOCK).exists()


def test_sigkill_of_an_overwrite_rerun_keeps_the_earlier_run_and_its_lock_is_taken_over(earlier):
    before = snapshot(earlier)
    process = _long_overwrite(earlier)
    try:
        _wait_for(lambda: _training(earlier), process, "the run to hold the folder")
        time.sleep(1.0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert snapshot(earlier) == before
    stale = json.loads((earlier / LOCK).read_text())
    assert stale["pid"] == process.pid  # left by the killed run, its holder now dead
    again = subprocess.run(
        [*LISA, *TRAIN, "--steps", "2", "--out", str(earlier), "--overwrite"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"took over the lock of pid {process.pid}" in again.stderr
    assert json.loads((earlier / MANIFEST).read_text())["status"] == "finished"
    assert not (earlier / LOCK).exists()
