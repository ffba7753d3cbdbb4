"""RunFolder and check_output_file: an output folder belongs to one run and never mixes runs."""

from __future__ import annotations

import json

import pytest

from lisa_apps.outputs import MANIFEST, CommandRuns, OutputError, RunFolder, check_output_file


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_manifest_lists_each_file_as_it_is_written_and_the_final_status(tmp_path):
    folder = RunFolder(tmp_path / "run", command="test", arguments={"steps": 3})
    with folder:
        folder.write_text("a.txt", "a")
        assert manifest(folder.path)["status"] == "running"
        assert manifest(folder.path)["files"] == ["a.txt"]
        folder.write_json("b.json", {"x": 1})
        sub = folder.subfolder("nested")
        sub.write_text("c.txt", "c")
    data = manifest(folder.path)
    assert data["status"] == "finished" and data["arguments"] == {"steps": 3}
    assert data["files"] == ["a.txt", "b.json", "nested"]
    assert (folder.path / "nested" / "c.txt").read_text() == "c"


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")]
)
def test_an_interrupted_or_failed_run_says_so_and_keeps_its_files(tmp_path, error, status):
    folder = RunFolder(tmp_path / "run", command="test")
    with pytest.raises(error), CommandRuns() as runs, folder:
        folder.write_text("done.txt", "kept")
        raise error
    assert manifest(folder.path)["status"] == status
    assert (folder.path / "done.txt").read_text() == "kept"
    assert (folder in runs.interrupted()) == (status == "interrupted")


def test_a_command_reports_only_the_folders_it_opened(tmp_path):
    earlier = RunFolder(tmp_path / "earlier", command="test")  # e.g. a Python API call before
    with pytest.raises(KeyboardInterrupt), earlier:
        raise KeyboardInterrupt
    left_open = RunFolder(tmp_path / "open", command="test").open()  # the caller's, still open
    with CommandRuns() as runs:
        ours = RunFolder(tmp_path / "ours", command="test").open()
        finished = RunFolder(tmp_path / "done", command="test")
        with finished:
            finished.write_text("a.txt", "a")
    assert runs.interrupted() == [ours]  # the still-open folder of the command is closed so
    assert manifest(ours.path)["status"] == "interrupted"
    assert left_open.status == "running" and manifest(finished.path)["status"] == "finished"
    left_open.close()


def test_a_second_run_is_refused_without_overwrite_and_replaces_only_its_files_with_it(tmp_path):
    first = RunFolder(tmp_path / "run", command="test")
    with first:
        first.write_text("old.csv", "old")
        first.subfolder("model").write_text("w.bin", "weights")
    (tmp_path / "run" / "notes.txt").write_text("the user's own")
    with pytest.raises(OutputError, match="already holds a run's results"):
        RunFolder(tmp_path / "run", command="test").check()
    second = RunFolder(tmp_path / "run", command="test", overwrite=True)
    with second:
        second.write_text("new.csv", "new")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [MANIFEST, "new.csv", "notes.txt"]  # old.csv and model/ went, notes stayed
    assert manifest(second.path)["files"] == ["new.csv"]


def test_a_folder_with_files_but_no_manifest_is_never_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds no lisa-run\.json"):
        RunFolder(tmp_path, command="test", overwrite=True).check()
    assert (tmp_path / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "f").write_text("x") and root / "f", "is a file"),
        (lambda root: (root / "f").write_text("x") and root / "f" / "run", "is a file, not a folder"),
        (lambda root: __import__("pathlib").Path("/proc/lisa-test-run"), "cannot write in"),
    ],
    ids=["a file", "under a file", "unwritable"],
)
def test_unusable_paths_are_refused_before_anything_is_created(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(OutputError, match=message):
        RunFolder(path, command="test").check()
    assert not path.is_dir()


def test_check_creates_nothing_and_leaves_no_probe_behind(tmp_path):
    RunFolder(tmp_path / "a" / "b", command="test").check()
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_never_removes_anything_outside_its_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps({"command": "test", "files": ["../precious.txt"]}))
    with RunFolder(run, command="test", overwrite=True):
        pass
    assert outside.read_text() == "keep"


def test_check_output_file_refuses_an_existing_file_unless_overwrite(tmp_path):
    target = tmp_path / "policy.json"
    assert check_output_file(target) == target
    target.write_text("{}")
    with pytest.raises(OutputError, match="already exists"):
        check_output_file(target)
    assert check_output_file(target, overwrite=True) == target
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path)


def test_an_empty_out_is_refused_rather_than_taken_for_the_current_folder():
    with pytest.raises(OutputError, match="--out is empty; pass a path"):
        RunFolder("", command="test")
    with pytest.raises(OutputError, match="--out is empty"):
        check_output_file("  ")


def test_an_unwritable_output_file_is_named_in_the_message_not_its_folder():
    with pytest.raises(OutputError, match=r"^--out /proc/lisa-policy\.json: cannot write in /proc"):
        check_output_file("/proc/lisa-policy.json")


def test_a_refusal_lists_whole_names_and_how_many_more(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run, command="test") as folder:
        for index in range(9):
            folder.write_text(f"a-rather-long-file-name-{index}.csv", "x")
    with pytest.raises(OutputError, match=r"name-5\.csv and 3 more\)"):
        RunFolder(run, command="test").check()


def test_a_live_writer_holds_the_folder_and_a_second_one_is_refused(tmp_path):
    first = RunFolder(tmp_path / "run", command="test").open()
    try:
        second = RunFolder(tmp_path / "run", command="test", overwrite=True)
        with pytest.raises(OutputError, match=r"is being written by pid \d+ on .* \(test, since"):
            second.check()
    finally:
        first.close()
    assert not (tmp_path / "run" / ".lisa-lock").exists()


def test_a_study_still_running_is_not_resumed_by_a_second_process(tmp_path):
    from lisa_apps.study.folder import StudyFolder

    first = StudyFolder(tmp_path / "study", {"seeds": 2}).check().open()
    try:
        with pytest.raises(OutputError, match="is being written by pid"):
            StudyFolder(tmp_path / "study", {"seeds": 2}).check()
    finally:
        first.close("failed")
    assert StudyFolder(tmp_path / "study", {"seeds": 2}).check().resuming
