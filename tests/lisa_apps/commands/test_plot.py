"""`lisa plot`: the plots redrawn from saved files."""

from __future__ import annotations

import json

from lisa_apps.cli import main
from lisa_apps.outputs import MANIFEST


def test_plot_command_redraws_from_files(diagnosed, tmp_path):
    history = tmp_path / "history.json"
    history.write_text(json.dumps([[0, [0, 1]], [5, [2, 3]], [10, [1, 2]]]))
    out = tmp_path / "plots"
    argv = ["plot", "--norms", str(diagnosed / "norms.csv"), "--policy",
            str(diagnosed / "policy.json"), "--history", str(history), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {
        "layer_norms.png", "norm_heatmap.png", "policy.png", "inclusion.png", MANIFEST,
    }  # fmt: skip


def test_plot_reads_the_active_sets_file_of_lisa_train(diagnosed, tmp_path):
    history = tmp_path / "active_sets.json"
    history.write_text(json.dumps([{"step": 0, "active_blocks": [0, 3]}]))
    argv = ["plot", "--policy", str(diagnosed / "policy.json"), "--history", str(history),
            "--out", str(tmp_path / "plots")]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "plots" / "inclusion.png").is_file()
