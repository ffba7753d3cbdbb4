"""The command sequences the README and the docs show do what they say.

Each page's `lisa ...` lines run in order in one folder, as a reader would paste them, on the
tiny model and a tiny budget: the model names are replaced by tiny-llama and budget flags are
appended (argparse keeps the last value of a repeated flag). A sequence that feeds one command's
output to the next (diagnose -> policy -> train -> plot) must work as written, and a policy made
on a model must train that model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lisa_apps.cli import main
from tests.test_docs import ROOT, lisa_command_lines

MODELS = ("smollm2-135m", "path/to/your/model")
BUDGET = {
    "diagnose": ["--steps", "2", "--num-examples", "8", "--max-length", "384", "--no-progress"],
    "train": ["--steps", "1", "--train-examples", "4", "--eval-examples", "1", "--max-length",
              "384", "--no-accuracy", "--no-progress", "--no-save-model"],
    "demo": ["--probe-steps", "1", "--steps", "1", "--train-examples", "4", "--eval-examples", "1",
             "--max-length", "384", "--probe-max-length", "384", "--no-progress"],
    "study": ["--seeds", "1", "--steps", "1", "--lr-factors", "1", "--train-examples", "8",
              "--val-examples", "2", "--test-examples", "2", "--accuracy-examples", "0",
              "--max-length", "384"],
}  # fmt: skip
PAGES = ["README.md", "docs/quickstart.md", "docs/diagnostics.md", "docs/layers.md"]


def tiny(argv: list[str]) -> list[str]:
    argv = ["tiny-llama" if word in MODELS else word for word in argv]
    # Files the repository ships are named from its root; the sequence runs in a new folder.
    argv = [str(ROOT / word) if word.startswith("examples/") else word for word in argv]
    return [*argv, *BUDGET.get(argv[0], [])]


@pytest.mark.parametrize("page", PAGES)
def test_documented_sequence_runs_as_written(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [argv for argv, _ in lisa_command_lines(ROOT / page) if argv and argv[0] != "--help"]
    assert commands, f"{page} documents no lisa command"
    for argv in commands:
        assert main(tiny(argv)) == 0, f"{page}: lisa {' '.join(argv)}\n{capsys.readouterr().err}"
    for argv in commands:  # every run that used a policy trained the policy's model
        if argv[0] == "train" and "--policy" in argv:
            out = Path(argv[argv.index("--out") + 1])
            policy = json.loads(Path(argv[argv.index("--policy") + 1]).read_text())
            trained = json.loads((out / "metrics.json").read_text())["model"]
            assert trained == policy["provenance"]["model"] == "tiny-llama"
