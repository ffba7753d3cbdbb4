"""Shared runs for the command tests: one `lisa diagnose` on the tiny Llama, reused read-only."""

from __future__ import annotations

import pytest

from lisa_apps.cli import main


@pytest.fixture(scope="session")
def diagnosed(tmp_path_factory):
    """The output folder of `lisa diagnose --model tiny-llama` (3 steps, weight and delta)."""
    out = tmp_path_factory.mktemp("diagnose") / "out"
    code = main(
        [
            "diagnose", "--model", "tiny-llama", "--steps", "3", "--out", str(out),
            "--num-examples", "24", "--max-length", "256", "--kinds", "weight,delta",
            "--no-progress", "--gamma", "2",
        ]
    )  # fmt: skip
    assert code == 0
    return out
