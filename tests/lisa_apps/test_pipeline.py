"""diagnose(): the whole probe -> table -> skew -> policy -> plots pipeline as a function."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics.policy import SamplingPolicy
from diagnostics.recorder import load_norms
from lisa.layers import LayerMap
from lisa_apps.data import make_math_problems
from lisa_apps.models import load_model
from lisa_apps.outputs import MANIFEST
from lisa_apps.pipeline import DiagnoseSettings, diagnose


def test_diagnose_writes_every_file_and_returns_what_it_wrote(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = DiagnoseSettings(
        steps=2, batch_size=2, max_length=384, kinds=("weight", "delta"), progress=False
    )
    diagnosis = diagnose(
        model, tokenizer, make_math_problems(8), tmp_path, settings, model_name="tiny-llama"
    )

    assert sorted([*diagnosis.files, MANIFEST]) == sorted(p.name for p in tmp_path.iterdir())
    assert {
        "norms.csv",
        "skew.csv",
        "policy.json",
        "layer_norms.png",
        "layer_norms-delta.png",
    } <= set(diagnosis.files)
    reloaded = load_norms(tmp_path / "norms.csv")
    assert len(reloaded) == len(diagnosis.table)
    assert set(reloaded["method"]) == {"lora", "ft"}
    assert sorted(reloaded["step"].unique()) == [0, 1, 2]
    policy = SamplingPolicy.from_json(tmp_path / "policy.json")
    # Exactly: JSON writes each float64 in its shortest repr, which reads back to the same bits.
    np.testing.assert_array_equal(
        policy.inclusion_probabilities, diagnosis.policy.inclusion_probabilities
    )
    assert policy.inclusion_probabilities.sum() == pytest.approx(settings.gamma)
    policy.check_compatible(LayerMap.from_model(model))
    # Given a model object, the probes train copies: the caller's model is untouched.
    assert all(torch_equal(p, before[name]) for name, p in model.named_parameters())


def test_diagnose_by_name_builds_each_probe_model_and_matches_a_given_model(tmp_path):
    # Two routes to the same probes: a model object (copied per probe) and its name (loaded
    # per probe, nothing kept in between) give the same norms to the last digit.
    model, tokenizer = load_model("tiny-llama")
    settings = DiagnoseSettings(steps=2, batch_size=2, max_length=384, progress=False)
    examples = make_math_problems(4)
    by_object = diagnose(model, tokenizer, examples, tmp_path / "a", settings)
    by_name = diagnose("tiny-llama", tokenizer, examples, tmp_path / "b", settings)
    assert by_object.table["norm"].tolist() == by_name.table["norm"].tolist()
    assert by_name.policy.provenance["model"] == "tiny-llama"
    assert all(by_name.peak_memory_bytes[m] > 0 for m in ("lora", "ft"))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps=0"),
        ("kinds", ("norm",), "kinds="),
        ("reduce", ("mean",), "reduce="),
        ("lr_ft", 0.0, "lr_ft=0.0"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        DiagnoseSettings(**{field: value})


def test_policy_kind_must_be_recorded():
    with pytest.raises(ValueError, match="policy_kind='delta' is not among"):
        DiagnoseSettings(kinds=("weight",), policy_kind="delta")


def test_gamma_above_block_count_fails_before_any_probe(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    num_blocks = LayerMap.from_model(model).num_blocks
    with pytest.raises(ValueError, match=f"gamma={num_blocks + 1}"):
        diagnose(
            model,
            tokenizer,
            make_math_problems(4),
            tmp_path / "out",
            DiagnoseSettings(gamma=num_blocks + 1),
        )
    assert not list((tmp_path / "out").glob("norms*"))  # no probe ran
