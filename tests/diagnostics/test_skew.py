"""skew_summary and gini: known profiles, invariances, deterministic bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diagnostics.skew import gini, mean_norms, side_by_side, skew_summary


def _table(profiles: dict[str, list[float]], steps: int = 6, noise: float = 0.0, tied=False):
    """Tidy table with per-method mean profiles over [E, blocks..., H]."""
    rng = np.random.default_rng(0)
    rows = []
    for method, profile in profiles.items():
        num_blocks = len(profile) - 2
        groups = ["embed", *(f"block.{i}" for i in range(num_blocks)), "head"]
        if tied:
            groups, profile = groups[:-1], profile[:-1]
        for step in range(steps):
            for group, value in zip(groups, profile, strict=True):
                block = int(group.split(".")[1]) if group.startswith("block.") else None
                rows.append(
                    {
                        "run": "r",
                        "method": method,
                        "step": step,
                        "group": group,
                        "block_index": block,
                        "kind": "weight",
                        "reduce": "l2",
                        "norm": value * (1 + noise * rng.standard_normal()),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["block_index"] = frame["block_index"].astype("Int64")
    return frame


def test_gini_known_values():
    assert gini([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert gini([0.0, 0.0, 0.0, 1.0]) == pytest.approx(0.75)
    assert gini([1.0, 3.0]) == pytest.approx(0.25)  # |1-3|*2 / (2 * 4 * 2)
    assert np.isnan(gini([]))


@given(
    st.lists(st.floats(min_value=0.01, max_value=1e3, allow_nan=False), min_size=1, max_size=30),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_gini_scale_invariant_and_matches_pairwise_definition(values, scale):
    x = np.asarray(values)
    pairwise = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())
    assert gini(x) == pytest.approx(pairwise, abs=1e-12)
    assert gini(scale * x) == pytest.approx(gini(x), abs=1e-12)


def test_summary_of_known_profiles():
    table = _table({"lora": [40.0, 1.0, 2.0, 3.0, 20.0], "ft": [2.0, 2.0, 2.0, 2.0, 2.0]})
    summary = skew_summary(table).set_index("method")
    assert summary.loc["lora", "embed_ratio"] == pytest.approx(20.0)
    assert summary.loc["lora", "head_ratio"] == pytest.approx(10.0)
    assert summary.loc["lora", "gini"] == pytest.approx(gini([1.0, 2.0, 3.0]))
    assert summary.loc["ft", "embed_ratio"] == pytest.approx(1.0)
    assert summary.loc["ft", "gini"] == pytest.approx(0.0)
    # Constant over steps: the intervals collapse onto the point.
    assert summary.loc["lora", "embed_ratio_low"] == pytest.approx(20.0)
    assert summary.loc["lora", "embed_ratio_high"] == pytest.approx(20.0)
    assert summary.loc["lora", "num_steps"] == 6 and summary.loc["lora", "num_blocks"] == 3


def test_intervals_cover_the_point_and_repeat_with_the_seed():
    table = _table({"lora": [40.0, 1.0, 2.0, 3.0, 20.0]}, steps=20, noise=0.05)
    first = skew_summary(table, seed=1)
    assert (
        first.loc[0, "embed_ratio_low"]
        <= first.loc[0, "embed_ratio"]
        <= first.loc[0, "embed_ratio_high"]
    )
    assert first.loc[0, "embed_ratio_low"] < first.loc[0, "embed_ratio_high"]
    pd.testing.assert_frame_equal(first, skew_summary(table, seed=1))


def test_tied_model_has_no_head_ratio():
    summary = skew_summary(_table({"ft": [5.0, 1.0, 1.0, 1.0, 5.0]}, tied=True))
    assert np.isnan(summary.loc[0, "head_ratio"]) and summary.loc[0, "embed_ratio"] == 5.0


def test_mean_norms_are_the_mean_over_steps_in_layer_order():
    table = _table({"ft": [1.0, 2.0, 3.0, 4.0, 5.0]})
    table.loc[table["step"] == 0, "norm"] *= 7  # step 0 is 7x, five others 1x -> mean 2x
    means = mean_norms(table)
    assert means["group"].tolist() == ["embed", "block.0", "block.1", "block.2", "head"]
    assert means["mean_norm"].tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0])
    assert means["num_steps"].eq(6).all()


def test_side_by_side_puts_methods_in_columns():
    table = _table({"lora": [40.0, 1.0, 2.0, 3.0, 20.0], "ft": [2.0, 2.0, 2.0, 2.0, 2.0]})
    wide = side_by_side(skew_summary(table))
    assert list(wide.columns) == ["lora", "lora CI", "ft", "ft CI"]
    assert wide.loc[("weight", "l2", "embed_ratio"), "lora"] == pytest.approx(20.0)
