"""Study statistics against scipy on known inputs, and the rate choice and summary on a table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lisa_apps.study import choose_rates, mean_interval, paired_difference, summarise

LOSSES = [0.134, 0.121, 0.142, 0.128]


def test_mean_interval_matches_scipy_t_interval():
    result = mean_interval(LOSSES)
    low, high = stats.t.interval(0.95, len(LOSSES) - 1, loc=np.mean(LOSSES), scale=stats.sem(LOSSES))
    assert result["n"] == 4
    assert result["mean"] == pytest.approx(np.mean(LOSSES), rel=1e-12)
    assert result["std"] == pytest.approx(np.std(LOSSES, ddof=1), rel=1e-12)
    assert (result["low"], result["high"]) == pytest.approx((low, high), rel=1e-12)
    ci = stats.ttest_1samp(LOSSES, 0.0).confidence_interval(0.9)
    assert (mean_interval(LOSSES, 0.9)["low"], mean_interval(LOSSES, 0.9)["high"]) == pytest.approx(
        (ci.low, ci.high), rel=1e-12
    )


def test_mean_interval_of_one_value_has_no_spread_and_nan_values_are_dropped():
    assert math.isnan(mean_interval([0.5])["std"]) and mean_interval([0.5])["mean"] == 0.5
    assert mean_interval([0.5, float("nan"), 0.7])["n"] == 2
    assert mean_interval([])["n"] == 0
    with pytest.raises(ValueError, match="confidence"):
        mean_interval(LOSSES, 1.0)


def test_paired_difference_matches_scipy_ttest_rel_and_pairs_by_seed():
    values = {0: 0.134, 1: 0.121, 2: 0.142, 3: 0.128, 7: 9.9}  # seed 7 has no partner
    reference = {3: 0.120, 2: 0.135, 1: 0.118, 0: 0.125}
    result = paired_difference(values, reference)
    a = [values[s] for s in range(4)]
    b = [reference[s] for s in range(4)]
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert result["n"] == 4
    assert result["mean"] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert (result["low"], result["high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)


def _runs():
    rows = []
    for variant, method, losses in (("lisa-uniform", "lisa", [0.20, 0.22, 0.21]),
                                    ("lora-r8", "lora", [0.10, 0.13, 0.11])):  # fmt: skip
        for seed, loss in enumerate(losses):
            for rate, offset in ((1e-4, 0.05), (2e-4, 0.0)):
                rows.append({"variant": variant, "method": method, "policy": "", "gamma": None,
                             "interval": None, "state_policy": "", "train_eh": None,
                             "lora_rank": None, "seed": seed, "learning_rate": rate,
                             "val_loss": loss + offset + (0.3 if seed > 0 else 0),
                             "test_loss": loss + offset, "test_accuracy": 0.5,
                             "seconds_per_step": 1.0, "peak_memory_bytes": 10,
                             "optimizer_state_bytes": 5, "trainable_parameters": 3})  # fmt: skip
    return pd.DataFrame(rows)


def test_rates_are_chosen_on_validation_loss_of_the_tuning_seeds_only():
    runs = _runs()
    # Make the test loss prefer the other rate: the choice must not look at it.
    runs.loc[runs["learning_rate"] == 1e-4, "test_loss"] -= 1.0
    assert choose_rates(runs, (0,)) == {"lisa-uniform": 2e-4, "lora-r8": 2e-4}


def test_summary_reports_intervals_over_seeds_and_the_paired_difference_to_uniform_lisa():
    runs = _runs()
    summary = summarise(runs, {"lisa-uniform": 2e-4, "lora-r8": 2e-4}, "lisa-uniform")
    lora = summary.set_index("variant").loc["lora-r8"]
    assert lora["num_seeds"] == 3 and lora["learning_rate"] == 2e-4
    assert lora["test_loss_mean"] == pytest.approx(np.mean([0.10, 0.13, 0.11]))
    ci = stats.ttest_rel([0.10, 0.13, 0.11], [0.20, 0.22, 0.21]).confidence_interval()
    assert (lora["loss_diff_low"], lora["loss_diff_high"]) == pytest.approx((ci.low, ci.high))
    assert lora["loss_diff_high"] < 0  # LoRA's lower loss lies outside the seed spread here
    assert summary.set_index("variant").loc["lisa-uniform", "loss_diff_mean"] == 0.0
