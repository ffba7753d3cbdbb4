"""Presets as study variants: each carries its preset's settings, and trains with them."""

from __future__ import annotations

import json

import pytest

from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa_apps.presets import get_preset
from lisa_apps.study import StudyFolder, StudySettings, run_study

LISA_LR, LORA_LR = DEFAULT_LEARNING_RATES["lisa"], DEFAULT_LEARNING_RATES["lora"]

TINY = dict(model="tiny-llama", steps=2, batch_size=2, max_length=384, train_examples=8,
            val_examples=2, test_examples=3, accuracy_examples=0, max_new_tokens=4,
            device="cpu", precision="float32", seeds=1, lr_factors=(1.0, 2.0))  # fmt: skip


def test_each_preset_variant_has_its_presets_settings():
    settings = StudySettings(methods=("lisa", "lora"), presets=("badam", "owlore", "lisa-paper"))
    variants = {v.name: v for v in settings.variants()}
    assert list(variants) == ["lisa-uniform", "badam", "owlore", "lisa-paper", "lora-r8"]
    for name in ("badam", "owlore", "lisa-paper"):
        options, variant = get_preset(name).options, variants[name]
        assert (variant.gamma, variant.interval) == (options["gamma"], options["interval"])
        assert variant.state_policy == options.get("state_policy", "drop")
        assert variant.train_eh is not options.get("freeze_embeddings", False)
        # The preset's rate (else the method's default) is the centre of the study's sweep.
        centre = options.get("lr", DEFAULT_LEARNING_RATES["lisa"])
        assert settings.learning_rates(variant) == pytest.approx((centre / 2, centre, 2 * centre))
        assert variant.lr_scheduler == options.get("lr_scheduler")
    assert variants["badam"].policy == "cyclic" and variants["badam"].warmup_ratio == 0.1
    assert variants["owlore"].policy == "outlier"  # derived by the study, at owlore's gamma 5
    assert variants["lisa-paper"].policy == "uniform"
    with pytest.raises(ValueError, match="presets apply to LISA"):
        StudySettings(methods=("ft",), presets=("badam",))
    with pytest.raises(ValueError, match="presets: 'galore' is not one of"):
        StudySettings(presets=("galore",))


def test_a_preset_variant_trains_with_its_sampler_schedule_and_frozen_ends(tmp_path):
    settings = StudySettings(methods=("lisa",), presets=("badam",), **TINY)
    result = run_study(settings, StudyFolder(tmp_path / "s", settings.to_dict()).check(),
                       log=lambda _: None, plot=False)  # fmt: skip
    assert sorted(result.chosen_rates) == ["badam", "lisa-uniform"]
    assert result.runs.loc[result.runs["variant"] == "badam", "learning_rate"].tolist() == [1e-5, 2e-5]
    metrics = json.loads((tmp_path / "s" / "runs" / "badam-lr1e-05-seed0" / "metrics.json").read_text())
    config = metrics["settings"]
    assert (config["lr_scheduler"], config["warmup_ratio"]) == ("cosine", 0.1)
    lisa = config["lisa"]
    assert (lisa["sampler"], lisa["gamma"], lisa["interval"], lisa["state_policy"]) == ("cyclic", 1, 50, "reset")
    assert lisa["train_embeddings"] is False and lisa["train_head"] is False
    uniform = json.loads((tmp_path / "s" / "runs" / f"lisa-uniform-lr{LISA_LR:g}-seed0" / "metrics.json").read_text())
    assert uniform["settings"]["lr_scheduler"] == "constant"
