"""Presets (BAdam, OwLore, the LISA paper) and the per-group rate flags of `lisa train`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from diagnostics.policy import SamplingPolicy
from lisa import Lisa, LisaConfig
from lisa_apps import cli
from lisa_apps.commands import train
from lisa_apps.models import load_model
from lisa_apps.presets import Preset, available_presets, get_preset, register_preset

FAST = [
    "--model", "tiny-llama", "--train-examples", "8", "--eval-examples", "2", "--max-length",
    "384", "--no-progress", "--no-accuracy", "--skip-before", "--no-save-model",
]  # fmt: skip


def _parse(*tokens: str) -> argparse.Namespace:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train.configure(subparsers.choices["train"])
    return parser.parse_args(["train", *tokens, "--out", "unused"])


def test_registry_refuses_a_duplicate_name():
    assert available_presets() == ("badam", "owlore", "lisa-paper")
    with pytest.raises(ValueError, match="already registered"):
        register_preset(Preset("owlore", "again", {}, {}))
    with pytest.raises(ValueError, match="is not one of badam, owlore, lisa-paper"):
        get_preset("galore")


def test_flags_and_recipes_override_a_preset(tmp_path):
    args = _parse("--preset", "lisa-paper")
    assert (args.gamma, args.interval) == (2, 20)
    assert _parse("--preset", "lisa-paper", "--interval", "7").interval == 7
    assert _parse("--interval", "7", "--preset", "lisa-paper").interval == 7
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("preset: lisa-paper\ninterval: 30\n")
    args = _parse("--config", str(recipe))
    assert (args.preset, args.gamma, args.interval) == ("lisa-paper", 2, 30)
    assert _parse("--config", str(recipe), "--interval", "9").interval == 9


def test_lisa_paper_draws_two_blocks_every_20_steps_with_e_and_h():
    args = _parse("--preset", "lisa-paper")
    model, _ = load_model("tiny-llama")
    config = LisaConfig(
        gamma=args.gamma, interval=args.interval, train_embeddings=not args.freeze_embeddings,
        train_head=not args.freeze_head,
    )  # fmt: skip
    lisa = Lisa(model, torch.optim.AdamW(model.parameters()), config)
    draws = [lisa.begin_step() for _ in range(41)]
    assert [step for step, _ in lisa.history] == [0, 20, 40]
    assert all(len(blocks) == 2 for blocks in draws)
    assert {"embed", "head"} <= set(lisa.trainable_groups())


def test_badam_trains_one_block_at_a_time_in_ascending_order_with_e_and_h_frozen(tmp_path):
    out = tmp_path / "run"
    # --interval 1 overrides BAdam's 50 so that 5 steps show the order.
    argv = ["train", "--preset", "badam", "--interval", "1", "--steps", "5", "--lr-extras",
            "1e-3", *FAST, "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    draws = [entry["active_blocks"] for entry in json.loads((out / "active_sets.json").read_text())]
    assert draws == [[0], [1], [2], [3], [0]]
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    lisa = settings["lisa"]
    assert (lisa["gamma"], lisa["interval"], lisa["sampler"]) == (1, 1, "cyclic")
    assert (lisa["train_embeddings"], lisa["train_head"], lisa["state_policy"]) == (
        False, False, "reset",
    )  # fmt: skip
    assert (settings["learning_rate"], settings["lr_scheduler"], settings["warmup_ratio"]) == (
        1e-5, "cosine", 0.1,
    )  # fmt: skip
    assert settings["lr_extras"] == 1e-3


def test_owlore_samples_in_proportion_to_the_outlier_ratios(tmp_path, capsys):
    policy_path = tmp_path / "owlore.json"
    # tiny-llama has 4 blocks, so gamma 2 instead of OwLore's 5 (given next to the preset).
    argv = ["policy", "--source", "outlier", "--gamma", "2", "--model", "tiny-llama",
            "--batches", "2", "--batch-size", "2", "--max-length", "384", "--out",
            str(policy_path)]  # fmt: skip
    assert cli.main(argv) == 0
    policy = SamplingPolicy.from_json(policy_path)
    ratios = np.asarray(policy.provenance["scores"])
    expected = 2 * ratios / ratios.sum()
    assert expected.max() < 1  # nothing capped: pi is exactly proportional
    np.testing.assert_allclose(policy.inclusion_probabilities, expected, rtol=1e-12)

    out = tmp_path / "run"
    argv = ["train", "--preset", "owlore", "--policy", str(policy_path), "--gamma", "2",
            "--steps", "1", *FAST, "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    lisa = settings["lisa"]
    assert (lisa["sampler"], lisa["interval"], settings["learning_rate"]) == ("weighted", 50, 3e-4)
    np.testing.assert_allclose(lisa["sampler_options"]["inclusion_probabilities"], expected)
    assert lisa["train_embeddings"] and lisa["train_head"]


def _refusal(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_owlore_without_an_outlier_policy_is_refused(tmp_path, capsys):
    err = _refusal(capsys, ["train", "--preset", "owlore", *FAST, "--out", str(tmp_path / "a")])
    assert "lisa policy --source outlier --gamma 5" in err
    uniform = SamplingPolicy(np.full(4, 0.5), gamma=2, layer_names=tuple(f"block.{i}" for i in range(4)))
    uniform.to_json(tmp_path / "uniform.json")
    argv = ["train", "--preset", "owlore", "--gamma", "2", "--policy",
            str(tmp_path / "uniform.json"), *FAST, "--out", str(tmp_path / "b")]  # fmt: skip
    assert "needs a policy from the favoured outlier source" in _refusal(capsys, argv)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "lora", "--lr-embed", "1e-3"], "--lr-embed: LoRA trains no embedding"),
        (["--freeze-embeddings", "--lr-embed", "1e-3"], "--lr-embed sets a rate for what"),
        (["--model", "tiny-gpt2", "--lr-head", "1e-3"], "--lr-head 0.001: tiny-gpt2 ties"),
        (["--preset", "badam", "--method", "ft"], "--preset badam sets LISA's settings"),
        (["--weight-decay-extras", "-1"], "--weight-decay-extras"),
    ],
)
def test_bad_group_rate_and_preset_flags_are_refused(tmp_path, capsys, flags, message):
    argv = ["train", *FAST, *flags, "--out", str(tmp_path / "run")]
    assert message in _refusal(capsys, argv)
