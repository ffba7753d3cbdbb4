"""derive_policy and SamplingPolicy: sum = gamma, cap, scale invariance, JSON, compatibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model

from diagnostics.policy import SamplingPolicy, block_means, derive_policy
from lisa.layers import LayerMap
from lisa.signature import layer_signature

positive = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)


@st.composite
def profiles(draw):
    n = draw(st.integers(min_value=2, max_value=12))
    lora = np.array(draw(st.lists(positive, min_size=n, max_size=n)))
    ft = np.array(draw(st.lists(positive, min_size=n, max_size=n)))
    gamma = draw(st.integers(min_value=1, max_value=n))
    return lora, ft, gamma


@given(profiles())
def test_sum_equals_gamma_and_cap_respected(case):
    lora, ft, gamma = case
    pi = derive_policy(lora, ft, gamma).inclusion_probabilities
    assert pi.sum() == pytest.approx(gamma, abs=1e-9)
    assert pi.min() >= 0.0 and pi.max() <= 1.0


@given(
    profiles(), st.floats(min_value=1e-3, max_value=1e3), st.floats(min_value=1e-3, max_value=1e3)
)
def test_scale_invariance(case, lora_scale, ft_scale):
    lora, ft, gamma = case
    base = derive_policy(lora, ft, gamma).inclusion_probabilities
    scaled = derive_policy(lora * lora_scale, ft * ft_scale, gamma).inclusion_probabilities
    np.testing.assert_allclose(scaled, base, atol=1e-9)


def test_dominant_block_is_capped_and_excess_redistributed():
    policy = derive_policy([100.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0], gamma=2)
    np.testing.assert_allclose(policy.inclusion_probabilities, [1.0, 0.25, 0.25, 0.5], atol=1e-12)


def test_scores_are_lora_over_ft():
    policy = derive_policy([2.0, 6.0, 4.0], [1.0, 3.0, 1.0], gamma=1)
    assert policy.provenance["scores"] == pytest.approx([2.0, 2.0, 4.0])
    np.testing.assert_allclose(policy.inclusion_probabilities, [0.25, 0.25, 0.5])


def test_derive_from_a_norms_table_with_both_methods(tiny_llama):
    import pandas as pd

    rows = []
    for method, values in (("lora", [1.0, 3.0, 1.0, 1.0]), ("ft", [1.0, 1.0, 1.0, 1.0])):
        for step in range(3):
            for i, v in enumerate(values):
                rows.append(
                    {
                        "run": method,
                        "method": method,
                        "step": step,
                        "group": f"block.{i}",
                        "block_index": i,
                        "kind": "weight",
                        "reduce": "l2",
                        "norm": v,
                    }
                )
            rows.append(
                {
                    "run": method,
                    "method": method,
                    "step": step,
                    "group": "embed",
                    "block_index": pd.NA,
                    "kind": "weight",
                    "reduce": "l2",
                    "norm": 50.0,
                }
            )
    table = pd.DataFrame(rows)
    np.testing.assert_allclose(block_means(table, method="lora"), [1.0, 3.0, 1.0, 1.0])
    policy = derive_policy(table, table, gamma=2, layer_map=tiny_llama())
    np.testing.assert_allclose(policy.inclusion_probabilities, [1 / 3, 1.0, 1 / 3, 1 / 3])
    policy.check_compatible(tiny_llama())
    with pytest.raises(ValueError, match="pass method"):
        block_means(table)


def test_json_round_trip(tmp_path, tiny_llama):
    policy = derive_policy(
        [3.0, 1.0, 1.0, 1.0], [1.0] * 4, gamma=2, layer_map=tiny_llama(), source="unit test"
    )
    path = policy.to_json(tmp_path / "policy.json")
    loaded = SamplingPolicy.from_json(path)
    np.testing.assert_array_equal(loaded.inclusion_probabilities, policy.inclusion_probabilities)
    assert loaded.gamma == 2 and loaded.layer_names == policy.layer_names
    assert loaded.signature == policy.signature
    assert loaded.provenance == json.loads(json.dumps(policy.provenance))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="pickle"), "format"),
        (lambda d: d.pop("gamma"), "missing field 'gamma'"),
        (lambda d: d.update(inclusion_probabilities=[0.5, 0.5, 0.5, 0.2]), "sum to"),
        (lambda d: d.update(inclusion_probabilities=["a", 1, 1, 0]), "list of numbers"),
        (lambda d: d.update(layer_names=["block.0"]), "layer_names has 1"),
        (lambda d: d.update(train_head="yes"), "train_head"),
    ],
)
def test_invalid_json_is_refused_with_the_field(tmp_path, edit, message):
    data = derive_policy([1.0] * 4, [1.0] * 4, gamma=2).to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        SamplingPolicy.from_json(path)


def test_not_json_is_refused(tmp_path):
    path = tmp_path / "policy.json"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match="not valid JSON"):
        SamplingPolicy.from_json(path)


def test_mismatched_model_is_refused(tiny_llama):
    policy = derive_policy([1.0] * 4, [1.0] * 4, gamma=2, layer_map=tiny_llama(hidden=32))
    with pytest.raises(ValueError, match="policy is for 4 blocks but the model has 6"):
        policy.check_compatible(tiny_llama(num_blocks=6))
    with pytest.raises(ValueError, match=r"block 0 parameter .* shape"):
        policy.check_compatible(tiny_llama(hidden=64))
    unsigned = derive_policy([1.0] * 4, [1.0] * 4, gamma=2)
    unsigned.check_compatible(tiny_llama(hidden=64))  # only the block count can be checked


def test_compatible_with_the_lora_wrapped_model(tiny_llama):
    model = tiny_llama()
    policy = derive_policy([1.0] * 4, [1.0] * 4, gamma=2, layer_map=model)
    wrapped = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    policy.check_compatible(LayerMap.from_model(wrapped))
    assert layer_signature(wrapped) == layer_signature(model)


def test_to_sampler_draws_gamma_blocks_with_policy_probabilities():
    policy = derive_policy([4.0, 1.0, 1.0, 2.0], [1.0] * 4, gamma=2)
    sampler = policy.to_sampler()
    np.testing.assert_allclose(sampler.inclusion_probabilities(), policy.inclusion_probabilities)
    rng = np.random.default_rng(0)
    draws = [sampler.sample(rng) for _ in range(4000)]
    assert all(len(d) == 2 for d in draws)
    frequency = np.bincount(np.concatenate(draws), minlength=4) / len(draws)
    # 4000 draws: binomial sd <= 0.008; 0.03 is ~4 sd.
    np.testing.assert_allclose(frequency, policy.inclusion_probabilities, atol=0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora": [1.0, 1.0], "ft": [1.0, 1.0, 1.0]}, "blocks but FT"),
        ({"lora": [1.0, 1.0], "ft": [1.0, 0.0]}, "positive"),
        ({"lora": [1.0, 1.0], "ft": [1.0, 1.0], "gamma": 3}, "gamma"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        derive_policy(**{"gamma": 1, **kwargs})


def test_policy_arrays_are_read_only():
    policy = derive_policy([1.0, 2.0], [1.0, 1.0], gamma=1)
    with pytest.raises(ValueError):
        policy.inclusion_probabilities[0] = 0.9


def test_policy_lisa_config_draws_only_policy_blocks_and_keeps_its_flags(tiny_llama):
    import torch

    from lisa.engine import Lisa

    model = tiny_llama(num_blocks=4)
    pi = np.array([0.0, 1.0, 0.0, 1.0])
    policy = SamplingPolicy(
        pi, 2, tuple(f"block.{i}" for i in range(4)), train_embeddings=False
    )
    config = policy.to_lisa_config(interval=1, seed=3)
    assert (config.gamma, config.interval, config.seed) == (2, 1, 3)
    assert config.train_embeddings is False and config.train_head is True
    engine = Lisa(model, torch.optim.AdamW(model.parameters()), config)
    for step in range(5):
        assert engine.begin_step(step) == (1, 3)
    assert not model.get_input_embeddings().weight.requires_grad
