"""Held-out loss curves: the training hook, the per-step summary against scipy, and resumption."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import lisa_apps.study.runner as runner_module
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa_apps.data import make_math_problems
from lisa_apps.models import load_model
from lisa_apps.study import (
    CURVE_COLUMNS,
    StudyFolder,
    StudySettings,
    run_study,
    summarise_curves,
    summarise_curves_at_time,
)
from lisa_apps.training import FinetuneConfig, finetune

LISA_LR, LORA_LR = DEFAULT_LEARNING_RATES["lisa"], DEFAULT_LEARNING_RATES["lora"]

TINY = dict(model="tiny-llama", steps=4, batch_size=2, max_length=128, train_examples=12,
            val_examples=4, test_examples=4, accuracy_examples=0, max_new_tokens=4,
            device="cpu", precision="float32")  # fmt: skip


def _run(eval_every):
    model, tokenizer = load_model("tiny-llama", seed=0)
    config = FinetuneConfig(method="lisa", steps=4, batch_size=2, max_length=384, device="cpu",
                            precision="float32", score_accuracy=False)  # fmt: skip
    return finetune(model, tokenizer, make_math_problems(8), make_math_problems(3, split="test"),
                    config, progress=False, evaluate_before=False, eval_every=eval_every)  # fmt: skip


def test_eval_every_scores_the_held_out_loss_at_each_multiple_and_leaves_training_alone():
    with_curve, without = _run(2), _run(None)
    curve = with_curve.metrics["eval_curve"]
    assert [point["step"] for point in curve] == [2, 4]
    # The step-4 point and the final evaluation score the same weights on the same batches with
    # the same code in float32: the same operations, so equal up to rounding (1e-6 relative).
    assert curve[-1]["eval_loss"] == pytest.approx(with_curve.metrics["after"]["eval_loss"], rel=1e-6)
    assert curve[0]["eval_loss"] != curve[1]["eval_loss"]
    # Scoring draws no random numbers and puts the model back in train mode: training's losses
    # are those of the same run without the curve, bit for bit.
    assert with_curve.log_history["loss"].dropna().tolist() == without.log_history["loss"].dropna().tolist()
    assert "eval_curve" not in without.metrics


def _synthetic_curves() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for variant, shift in (("lisa-uniform", 0.0), ("lora-r8", 0.05), ("ft", -0.02)):
        for seed in range(4):
            for step in (10, 20, 30):
                rows.append({"run_id": f"{variant}-{seed}", "variant": variant, "method": "x",
                             "seed": seed, "learning_rate": 1e-4, "step": step,
                             "eval_loss": 2.0 - step / 30 + shift + rng.normal(0, 0.02)})  # fmt: skip
    # A rate that was not chosen must not count.
    rows.append({"run_id": "ft-other", "variant": "ft", "method": "x", "seed": 0,
                 "learning_rate": 9e-4, "step": 10, "eval_loss": 50.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_curve_summary_per_step_matches_scipy_t_interval_and_ttest_rel():
    curves = _synthetic_curves()
    chosen = {"lisa-uniform": 1e-4, "lora-r8": 1e-4, "ft": 1e-4}
    summary = summarise_curves(curves, chosen, "lisa-uniform")
    assert summary[["variant", "step"]].values.tolist() == [
        [v, s] for v in chosen for s in (10, 20, 30)
    ]
    for _, row in summary.iterrows():
        mine = curves[(curves["variant"] == row["variant"]) & (curves["step"] == row["step"])
                      & (curves["learning_rate"] == 1e-4)].sort_values("seed")  # fmt: skip
        ref = curves[(curves["variant"] == "lisa-uniform") & (curves["step"] == row["step"])
                     ].sort_values("seed")["eval_loss"].to_numpy()  # fmt: skip
        values = mine["eval_loss"].to_numpy()
        assert row["num_seeds"] == 4
        low, high = stats.t.interval(0.95, 3, loc=values.mean(), scale=stats.sem(values))
        assert (row["eval_loss_low"], row["eval_loss_high"]) == pytest.approx((low, high), rel=1e-12)
        if row["variant"] == "lisa-uniform":
            assert row["loss_diff_mean"] == 0.0 and row["num_pairs"] == 4
            continue
        ci = stats.ttest_rel(values, ref).confidence_interval(0.95)
        assert row["num_pairs"] == 4
        assert row["loss_diff_mean"] == pytest.approx(np.mean(values - ref), rel=1e-12)
        assert (row["loss_diff_low"], row["loss_diff_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert summarise_curves(curves, chosen, None)["loss_diff_mean"].isna().all()


def test_equal_time_comparison_reads_each_curve_at_the_reference_times_and_never_extrapolates():
    rng = np.random.default_rng(1)
    curves, runs = [], []
    # Seconds per step of each variant and seed (seed-to-seed jitter, as measured runs have).
    speed = {"lisa-uniform": 1.0, "slow": 1.5, "fast": 0.5}
    for variant, per_step in speed.items():
        for seed in range(4):
            run_id = f"{variant}-{seed}"
            runs.append({"run_id": run_id, "seconds_per_step": per_step * (1 + 0.01 * seed)})
            for step in (10, 20, 30):
                curves.append({"run_id": run_id, "variant": variant, "seed": seed,
                               "learning_rate": 1e-4, "step": step,
                               "eval_loss": 2.0 - step / 30 + rng.normal(0, 0.05)})  # fmt: skip
    curves, runs = pd.DataFrame(curves), pd.DataFrame(runs)
    chosen = {name: 1e-4 for name in speed}
    summary = summarise_curves_at_time(curves, runs, chosen, "lisa-uniform")
    per_step = runs.set_index("run_id")["seconds_per_step"]

    def loss(variant, seed, step):
        frame = curves[(curves["run_id"] == f"{variant}-{seed}") & (curves["step"] == step)]
        return float(frame["eval_loss"].iloc[0])

    for _, row in summary.iterrows():
        k, variant = int(row["reference_step"]), row["variant"]
        expected, reference, reached = [], [], []
        for seed in range(4):
            t = k * per_step[f"lisa-uniform-{seed}"]
            own = per_step[f"{variant}-{seed}"]
            times = [10 * own, 20 * own, 30 * own]
            if times[0] <= t <= times[-1]:  # inside the run's own evaluations: interpolate
                expected.append(np.interp(t, times, [loss(variant, seed, s) for s in (10, 20, 30)]))
                reference.append(loss("lisa-uniform", seed, k))
                reached.append(t / own)
        assert row["num_seeds"] == row["num_pairs"] == len(expected)
        if not expected:  # the slow runs had not scored at 10 s; the fast ones had ended by 20 s
            assert (variant, k) in {("slow", 10), ("fast", 20), ("fast", 30)}
            assert np.isnan(row["eval_loss_mean"]) and np.isnan(row["loss_diff_mean"])
            continue
        assert row["eval_loss_mean"] == pytest.approx(np.mean(expected), rel=1e-12)
        assert row["variant_step_mean"] == pytest.approx(np.mean(reached), rel=1e-12)
        if variant == "lisa-uniform":
            assert row["loss_diff_mean"] == 0.0 and row["variant_step_mean"] == k
            continue
        ci = stats.ttest_rel(expected, reference).confidence_interval(0.95)
        assert row["loss_diff_mean"] == pytest.approx(np.mean(np.subtract(expected, reference)), rel=1e-12)
        assert (row["loss_diff_low"], row["loss_diff_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    # slow: 20 and 30 s of LISA's time are slow's steps ~13.3 and 20; fast: 10 s is its step 20.
    assert summary[summary["variant"] == "slow"]["num_pairs"].tolist() == [0, 4, 4]
    assert summary[summary["variant"] == "fast"]["num_pairs"].tolist() == [4, 0, 0]


def test_a_resumed_study_keeps_the_curves_of_finished_runs(tmp_path, monkeypatch):
    settings = StudySettings(methods=("lisa",), seeds=2, lr_factors=(1.0,), eval_every=2,
                             lr_scheduler="cosine", warmup_ratio=0.25, **TINY)  # fmt: skip
    out = tmp_path / "study"
    real = runner_module._train_one
    calls = []

    def interrupt_second(settings, run, *args):
        calls.append(run.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(settings, run, *args)

    monkeypatch.setattr(runner_module, "_train_one", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_study(settings, StudyFolder(out, settings.to_dict()).check(), log=lambda _: None)
    first = pd.read_csv(out / "curves.csv")
    assert first["run_id"].unique().tolist() == [f"lisa-uniform-lr{LISA_LR:g}-seed0"]
    monkeypatch.setattr(runner_module, "_train_one", real)
    result = run_study(settings, StudyFolder(out, settings.to_dict()).check(), log=lambda _: None)
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == list(CURVE_COLUMNS)
    assert curves[["seed", "step"]].values.tolist() == [[0, 2], [0, 4], [1, 2], [1, 4]]
    pd.testing.assert_frame_equal(curves.iloc[:2], first)  # the finished run's curve is kept
    # The last point of each curve is the run's final test loss (same weights, same batches).
    last = curves.groupby("run_id")["eval_loss"].last()
    assert last.to_numpy() == pytest.approx(result.runs.set_index("run_id").loc[last.index, "test_loss"].to_numpy(), rel=1e-6)
    summary = pd.read_csv(out / "summary_curves.csv")
    assert summary["step"].tolist() == [2, 4] and (summary["num_seeds"] == 2).all()
    assert {"curves.csv", "summary_curves.csv", "summary_time.csv", "curves.png"} <= set(result.files)
    # One method: the reference against itself at equal time is the per-step curve.
    at_time = pd.read_csv(out / "summary_time.csv")
    assert at_time["variant_step_mean"].tolist() == [2.0, 4.0]
    assert at_time["eval_loss_mean"].to_numpy() == pytest.approx(summary["eval_loss_mean"].to_numpy(), rel=1e-12)
    # The schedule is part of the study's settings: another one is refused on resume.
    changed = StudySettings(methods=("lisa",), seeds=2, lr_factors=(1.0,), eval_every=2,
                            lr_scheduler="linear", warmup_ratio=0.25, **TINY)  # fmt: skip
    with pytest.raises(Exception, match="other settings \\(lr_scheduler"):
        StudyFolder(out, changed.to_dict()).check()
    logged = (out / "runs" / f"lisa-uniform-lr{LISA_LR:g}-seed1" / "metrics.json").read_text()
    assert '"lr_scheduler": "cosine"' in logged
