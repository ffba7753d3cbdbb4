"""`lisa study`: the issue's command as written, its resumption, and refused inputs."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from diagnostics.policy import SamplingPolicy
from lisa_apps.cli import main
from lisa_apps.recipes import load_recipe
from lisa_apps.study import RUN_COLUMNS

# The issue's grid, with two rates chosen on seed 0 alone (the default sweep of three rates on
# every seed trains twice as many runs and checks nothing more).
ISSUE_COMMAND = ["study", "--model", "tiny-llama", "--methods", "ft,lora,lisa",
                 "--policies", "uniform,grad-norm", "--seeds", "2", "--steps", "2",
                 "--lr-factors", "1,2", "--tune-seeds", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    assert main([*ISSUE_COMMAND, "--out", str(out)]) == 0
    return out


def test_the_issue_command_writes_runs_summary_plot_and_policy(studied):
    runs = pd.read_csv(studied / "runs.csv")
    assert list(runs.columns) == list(RUN_COLUMNS)
    # 4 variants x (2 rates on seed 0 + the chosen one on seed 1)
    assert len(runs) == 12 and set(runs["seed"]) == {0, 1}
    assert runs.groupby("seed").size().to_dict() == {0: 8, 1: 4}
    assert set(runs["variant"]) == {"ft", "lora-r8", "lisa-uniform", "lisa-grad-norm"}
    assert runs["test_loss"].notna().all() and runs["val_loss"].notna().all()
    assert (runs["num_scored"] == 32).all() and runs["optimizer_state_bytes"].gt(0).all()
    summary = pd.read_csv(studied / "summary.csv").set_index("variant")
    assert sorted(summary.index) == ["ft", "lisa-grad-norm", "lisa-uniform", "lora-r8"]
    for column in ("test_loss_mean", "test_loss_std", "test_loss_low", "test_loss_high",
                   "test_accuracy_mean", "loss_diff_mean", "loss_diff_low", "loss_diff_high"):  # fmt: skip
        assert summary[column].notna().all(), column
    assert (summary["num_seeds"] == 2).all() and (summary.loc["lisa-uniform", "loss_diff_mean"] == 0)
    policy = SamplingPolicy.from_json(studied / "policies" / "grad-norm.json")
    assert policy.provenance["score_source"] == "grad-norm" and policy.gamma == 2
    assert (studied / "loss.png").stat().st_size > 0
    assert load_recipe(studied / "recipe.yaml")["seeds"] == 2  # --config of a repeat
    for run_id in runs["run_id"]:
        assert (studied / "runs" / run_id / "metrics.json").is_file()


def test_the_same_command_again_trains_nothing_and_says_so(studied, capsys):
    before = (studied / "runs.csv").read_text()
    assert main([*ISSUE_COMMAND, "--out", str(studied)]) == 0
    out = capsys.readouterr().out
    assert "12 finished runs are kept and not trained again" in out
    assert "trained 0 runs (12 were finished before" in out
    assert (studied / "runs.csv").read_text() == before


def test_a_changed_default_rate_is_refused_on_resume_before_any_work(studied, capsys, monkeypatch):
    # The study records its rate factors; the rates are the methods' defaults times them. A
    # default changed since the study began would make the resumed sweep another study's.
    import lisa_apps.study.settings as settings_module

    changed = dict(settings_module.DEFAULT_LEARNING_RATES, lisa=settings_module.DEFAULT_LEARNING_RATES["lisa"] / 2)
    monkeypatch.setattr(settings_module, "DEFAULT_LEARNING_RATES", changed)
    before = {p: p.stat().st_mtime_ns for p in studied.rglob("*")}
    assert main([*ISSUE_COMMAND, "--out", str(studied)]) == 2
    err = capsys.readouterr().err
    assert "which the study's sweep no longer has" in err and "lisa.defaults" in err
    assert err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in studied.rglob("*")} == before  # nothing touched


def test_a_study_begun_under_other_defaults_resumes_with_the_base_rate_it_began_at(
    studied, tmp_path, capsys, monkeypatch
):
    import lisa_apps.study.settings as settings_module

    began = settings_module.DEFAULT_LEARNING_RATES["lisa"]
    changed = dict(settings_module.DEFAULT_LEARNING_RATES, lisa=began / 2)
    monkeypatch.setattr(settings_module, "DEFAULT_LEARNING_RATES", changed)
    copy = tmp_path / "copy"  # the module's study stays as it began, for the other tests
    shutil.copytree(studied, copy)
    assert main([*ISSUE_COMMAND, "--out", str(copy), "--lr-base", "lora=1e-3"]) == 2
    assert "pass the one it began at with --lr-base (lisa=RATE)" in capsys.readouterr().err
    assert main([*ISSUE_COMMAND, "--out", str(copy), "--lr-base", f"lisa={began:g}"]) == 0
    assert "trained 0 runs (12 were finished before" in capsys.readouterr().out
    assert pd.read_csv(copy / "runs.csv").equals(pd.read_csv(studied / "runs.csv"))
    # From now on the folder records its base rate: another one is another study.
    assert main([*ISSUE_COMMAND, "--out", str(copy), "--lr-base", f"lisa={began * 3:g}"]) == 2
    assert "holds a study with other settings (lr_base:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "3"], "holds a study with other settings (seeds: 2 there, 3 now)"),
        (["--gammas", "2,9"], "--gammas 9 is more than the 4 blocks of tiny-llama"),
        (["--tune-seeds", "3"], "--tune-seeds 3 is more than --seeds 2"),
        (["--accuracy-examples", "40"], "--accuracy-examples 40 is more than --test-examples 32"),
        (["--lr-factors", "1,-2"], "argument --lr-factors: must be a number > 0, got -2"),
        (["--policies", "uniform,grad"], "argument --policies: grad not among"),
        (["--presets", "badam,owlore"], "--presets owlore: its gamma 5 is more than the 4 blocks"),
        (["--eval-every", "3"], "--eval-every 3 is more than --steps 2"),
        (["--lr-scheduler", "cosin"], "--lr-scheduler 'cosin' is not a scheduler"),
        (["--warmup-steps", "1", "--warmup-ratio", "0.5"], "both set the warm-up; pass one"),
        (["--lr-scheduler", "cosine"], "holds a study with other settings (lr_scheduler"),
        (["--lr-base", "lisa=0"], "argument --lr-base: must be a number > 0, got 0"),
        (["--lr-base", "lisa:4e-4"], "argument --lr-base: 'lisa:4e-4' is not METHOD=RATE"),
        (["--lr-base", "lisa=1e-4,lisa=2e-4"], "gives lisa twice"),
    ],
)
def test_bad_inputs_are_refused_before_any_work(studied, capsys, extra, message):
    command = [*ISSUE_COMMAND, "--out", str(studied)]
    if extra[0] in command:
        index = command.index(extra[0])
        command[index : index + 2] = extra
    else:
        command += extra
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("lisa study: error:") and message in err and err.count("\n") == 1


def test_a_rate_for_a_method_the_study_does_not_run_is_refused(tmp_path, capsys):
    assert main(["study", "--model", "tiny-llama", "--methods", "lisa", "--lr-base", "lora=1e-3",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--lr-base gives a rate for lora, which --methods does not run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_non_lisa_study_refuses_lisa_flags(tmp_path, capsys):
    assert main(["study", "--model", "tiny-llama", "--methods", "ft", "--policies", "grad-norm",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "--policies applies only to LISA runs; drop it or add lisa to --methods" in capsys.readouterr().err
