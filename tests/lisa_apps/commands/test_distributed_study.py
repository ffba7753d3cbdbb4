"""`lisa study --distributed ddp` under torchrun (2 gloo ranks): one set of results, resumable,
and the same runs as the one-process study (draws, and losses within ``loss_bound`` of
tests/lisa_apps/commands/test_distributed_demo.py, which holds the demo's run; apart so
that the two 2-rank runs can go to two test workers)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lisa_apps.cli import main
from lisa_apps.commands.arguments import load_data
from lisa_apps.data import tokenize_examples
from lisa_apps.models import load_model
from tests.lisa_apps.commands.test_distributed_commands import WORLD, _one_set_of_results, torchrun
from tests.lisa_apps.commands.test_distributed_demo import (
    assert_losses_close,
    gradient_l1,
    loss_bound,
)

STUDY = [
    "study", "--model", "tiny-llama", "--methods", "lisa", "--policies", "uniform,grad-norm",
    "--seeds", "2", "--tune-seeds", "1", "--lr-factors", "1", "--steps", "3",
    "--train-examples", "16", "--val-examples", "4", "--test-examples", "4",
    "--accuracy-examples", "0", "--batch-size", "4", "--max-length", "256",
]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_study(tmp_path_factory):
    """A one-process study, and a copy of it whose last run the ddp study trains again."""
    root = tmp_path_factory.mktemp("study")
    one, two = root / "one", root / "two"
    assert main([*STUDY, "--out", str(one)]) == 0
    shutil.copytree(one, two)
    # The last run (a later seed at the chosen rate, with the derived grad-norm policy) is
    # dropped, so the ranks must agree on what remains, the policy and the chosen rate.
    lines = (two / "runs.csv").read_text().splitlines(keepends=True)
    (two / "runs.csv").write_text("".join(lines[:-1]))
    last = pd.read_csv(one / "runs.csv")["run_id"].iloc[-1]
    shutil.rmtree(two / "runs" / last)
    completed = torchrun(*STUDY, "--distributed", "ddp", "--out", str(two))
    return one, two, last, completed.stdout


def test_study_ddp_under_torchrun_resumes_and_writes_one_set_of_results(ddp_study):
    one, two, last, stdout = ddp_study
    _one_set_of_results(two)
    assert stdout.count("3 finished runs are kept") == 1
    assert stdout.count("trained 1 runs (3 were finished before") == 1
    # The earlier rows are kept byte for byte; the new one is appended once.
    before = (one / "runs.csv").read_text().splitlines()
    after = (two / "runs.csv").read_text().splitlines()
    assert after[:-1] == before[:-1] and after[-1].startswith(f"{last},")
    metrics = json.loads((two / "runs" / last / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["settings"]["distributed"] == "ddp"
    assert json.loads((two / "settings.json").read_text())["distributed"] == "ddp"
    assert (two / "summary.csv").is_file() and (two / "loss.png").is_file()


# Not marked numerics (not rerun under each CPU kernel set): the bound allows a first-step relative
# difference of FIRST_LOSS_RTOL (9.8e-4), orders of magnitude above what another kernel set's
# rounding gives, and is looser at later steps; the kernel-sensitive comparison of this loop is
# tests/lisa/test_distributed.py's, which is rerun.
def test_study_ddp_run_equals_the_one_process_run(ddp_study):
    one, two, last, _ = ddp_study
    history = {
        name: pd.read_csv(folder / "runs" / last / "log_history.csv")
        for name, folder in (("one", one), ("two", two))
    }
    assert (
        history["two"]["lisa_active_blocks"].dropna().tolist()
        == history["one"]["lisa_active_blocks"].dropna().tolist()
    )
    seed = int(pd.read_csv(one / "runs.csv")["seed"].iloc[-1])
    _, tokenizer = load_model("tiny-llama", seed=seed)
    examples = load_data("math", split="train", num_examples=20, seed=0)
    l1 = gradient_l1(seed, tokenize_examples(examples, tokenizer, max_length=256))
    assert_losses_close(
        history["two"]["loss"].dropna().tolist(), history["one"]["loss"].dropna().tolist(), l1
    )
    # The held-out losses after the last step, from weights as far apart as a fourth step's.
    row = {name: pd.read_csv(folder / "runs.csv").iloc[-1] for name, folder in
           (("one", one), ("two", two))}  # fmt: skip
    for column in ("val_loss", "test_loss"):
        reference = float(row["one"][column])
        assert abs(float(row["two"][column]) - reference) <= loss_bound(reference, 4, l1)
