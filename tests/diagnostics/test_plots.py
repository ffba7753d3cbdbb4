"""Plots: each returns a Figure, saves when given a path, and shows the data it was given."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics.plots import (
    inclusion_frequencies,
    plot_inclusion_frequencies,
    plot_layer_norms,
    plot_norm_heatmap,
    plot_policy,
)
from diagnostics.policy import derive_policy


@pytest.fixture
def table():
    rows = []
    for method, profile in (("lora", [40.0, 1.0, 2.0, 3.0, 20.0, 5.0]), ("ft", [2.0] * 6)):
        groups = ["embed", "block.0", "block.1", "block.2", "head", "extras"]
        for step in range(4):
            for group, value in zip(groups, profile, strict=True):
                block = int(group[-1]) if group.startswith("block.") else pd.NA
                rows.append(
                    {
                        "run": method,
                        "method": method,
                        "step": step,
                        "group": group,
                        "block_index": block,
                        "kind": "weight",
                        "reduce": "l2",
                        "norm": value * (1 + 0.01 * step),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["block_index"] = frame["block_index"].astype("Int64")
    return frame


def test_figure2_layout_log_axis_and_file(table, tmp_path):
    figure = plot_layer_norms(table, tmp_path / "fig2.png")
    assert (tmp_path / "fig2.png").stat().st_size > 1000
    axis = figure.axes[0]
    assert axis.get_yscale() == "log"
    assert [t.get_text() for t in axis.get_xticklabels()] == ["E", "0", "1", "2", "H"]
    heights = sorted(round(p.get_height(), 6) for p in axis.patches if p.get_height() > 0)
    assert len(heights) == 10  # 5 layers x 2 methods; extras are not in the paper's layout
    assert max(heights) == pytest.approx(40.0 * 1.015)


def test_heatmap_has_one_panel_per_method(table, tmp_path):
    figure = plot_norm_heatmap(table, tmp_path / "heat.png", relative=True)
    assert (tmp_path / "heat.png").exists()
    titles = [a.get_title() for a in figure.axes if a.get_title()]
    assert titles == ["lora: weight norm per step", "ft: weight norm per step"]


def test_unknown_kind_is_refused(table):
    with pytest.raises(ValueError, match="kind='delta'"):
        plot_layer_norms(table, kind="delta")


def test_policy_plot_shows_uniform_line(tmp_path):
    policy = derive_policy([4.0, 1.0, 1.0, 2.0], [1.0] * 4, gamma=2)
    figure = plot_policy(policy, tmp_path / "policy.png")
    axis = figure.axes[0]
    assert [round(p.get_height(), 6) for p in axis.patches] == [1.0, 0.25, 0.25, 0.5]
    (uniform,) = [line for line in axis.lines if line.get_label().startswith("uniform")]
    assert uniform.get_ydata()[0] == pytest.approx(0.5)  # gamma / N


def test_inclusion_frequencies_from_every_history_format():
    history = [(0, (0, 1)), (5, (0, 2)), (10, (0, 3)), (15, (1, 3))]
    expected = [0.75, 0.5, 0.25, 0.5]
    as_dicts = [{"step": s, "active_blocks": list(b)} for s, b in history]
    tidy = pd.DataFrame([{"step": s, "block": b} for s, bs in history for b in bs])
    strings = pd.DataFrame(
        {"step": [s for s, _ in history], "active_blocks": [str(list(b)) for _, b in history]}
    )
    for source in (history, as_dicts, {"history": history}, tidy, strings):
        frame = inclusion_frequencies(source, 4)
        assert frame["frequency"].tolist() == expected
        assert (frame["low"] <= frame["frequency"]).all() and (
            frame["frequency"] <= frame["high"]
        ).all()


def test_inclusion_plot_against_policy(tmp_path):
    policy = derive_policy([4.0, 1.0, 1.0, 2.0], [1.0] * 4, gamma=2)
    sampler = policy.to_sampler()
    rng = np.random.default_rng(0)
    history = [(5 * i, sampler.sample(rng)) for i in range(300)]
    figure = plot_inclusion_frequencies(history, policy, tmp_path / "inclusion.png")
    assert (tmp_path / "inclusion.png").exists()
    assert "300 draws" in figure.axes[0].get_title()


def test_history_outside_the_blocks_is_refused():
    with pytest.raises(ValueError, match="outside"):
        inclusion_frequencies([(0, (0, 7))], 4)


def test_plotting_leaves_pyplot_alone(table):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_layer_norms(table)
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_plots_accept_a_sampler_as_well_as_a_policy(tmp_path):
    from diagnostics.plots import plot_inclusion_frequencies, plot_policy
    from lisa.samplers import make_sampler

    sampler = make_sampler("bernoulli", 4, probabilities=[1.0, 0.5, 0.5, 0.0])
    figure = plot_policy(sampler, tmp_path / "policy.png")
    assert "gamma = 2 of 4 blocks" in figure.axes[0].get_title()
    history = [(step, (0, 1 + step % 2)) for step in range(10)]
    plot_inclusion_frequencies(history, sampler, tmp_path / "frequencies.png")
    assert (tmp_path / "policy.png").exists() and (tmp_path / "frequencies.png").exists()
