"""layer_norms against direct computations: concatenated tensors, merged LoRA weights, deltas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from diagnostics.norms import layer_norms
from lisa.layers import LayerMap

RTOL = 1e-7  # two-level float32 rows, float64 accumulation


class ToyBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)


class ToyModel(nn.Module):
    """Embedding, three identical blocks, a head: small enough to fill with known values."""

    def __init__(self, vocab: int = 5, width: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(ToyBlock(width) for _ in range(3))
        self.head = nn.Linear(width, vocab, bias=False)


def _direct(params, reduce="l2") -> float:
    flat = torch.cat([p.detach().double().flatten() for p in params])
    norm = float(torch.linalg.norm(flat))
    return norm / math.sqrt(flat.numel()) if reduce == "rms" else norm


def _with_random_b(model: nn.Module, seed: int = 1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def _lora(model: nn.Module, targets=("q_proj", "v_proj", "down_proj"), rank=4, alpha=8, **kw):
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), **kw)
    return get_peft_model(copy.deepcopy(model), config)


def test_known_values_on_hand_made_model():
    model = ToyModel()
    layer_map = LayerMap.from_model(model, blocks_path="layers")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(2.0)
    norms = layer_norms(model, layer_map, kind="weight")
    # block: 3x3 weight + 3 bias = 12 elements of value 2 -> sqrt(12 * 4)
    assert norms["block.0"] == pytest.approx(math.sqrt(48.0), rel=1e-12)
    assert norms["embed"] == pytest.approx(math.sqrt(15 * 4.0), rel=1e-12)
    # A non-transformers model has no declared output embedding: its head lands in extras.
    assert norms[layer_map.group_of("head.weight")] == pytest.approx(math.sqrt(60.0), rel=1e-12)
    rms = layer_norms(model, layer_map, kind="weight", reduce="rms")
    assert rms.to_dict() == pytest.approx(dict.fromkeys(rms.index, 2.0), rel=1e-12)


@pytest.mark.parametrize("reduce", ["l2", "rms"])
@pytest.mark.parametrize("tie", [False, True])
def test_weight_norm_equals_norm_of_concatenation(tiny_llama, reduce, tie):
    model = tiny_llama(tie=tie)
    layer_map = LayerMap.from_model(model)
    norms = layer_norms(model, layer_map, reduce=reduce)
    assert tuple(norms.index) == layer_map.group_names
    for group in layer_map.group_names:
        expected = _direct([p for _, p in layer_map.parameters(group)], reduce)
        assert norms[group] == pytest.approx(expected, rel=RTOL)


def test_trainable_counts_only_requires_grad_and_leaves_out_frozen_groups(tiny_llama):
    model = tiny_llama()
    layer_map = LayerMap.from_model(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".layers.1." in name)
    norms = layer_norms(model, layer_map, kind="trainable")
    assert list(norms.index) == ["block.1"]
    assert norms["block.1"] == pytest.approx(
        _direct([p for _, p in layer_map.parameters("block.1")]), rel=RTOL
    )


def test_lora_weight_is_the_merged_weight(tiny_llama):
    model = _with_random_b(_lora(tiny_llama()))
    merged = copy.deepcopy(model).merge_and_unload()
    ours = layer_norms(model, kind="weight")
    theirs = layer_norms(merged, kind="weight")
    assert ours.to_dict() == pytest.approx(theirs.to_dict(), rel=1e-6)
    # With B != 0 the effective blocks differ from the base model's.
    plain = layer_norms(tiny_llama(), kind="weight")
    assert abs(ours["block.0"] - plain["block.0"]) > 1e-3


def test_lora_delta_equals_direct_sum_over_modules(tiny_llama):
    model = _with_random_b(_lora(tiny_llama()))
    layer_map = LayerMap.from_model(model)
    norms = layer_norms(model, layer_map, kind="delta")
    for index in range(layer_map.num_blocks):
        deltas = [
            module.get_delta_weight("default")
            for name, module in model.named_modules()
            if hasattr(module, "lora_A")
            and f".layers.{index}." in name
            and "default" in module.lora_A
        ]
        assert len(deltas) == 3
        assert norms[f"block.{index}"] == pytest.approx(_direct(deltas), rel=1e-6)
    # Unadapted groups did not move.
    assert norms["embed"] == 0.0 and norms["head"] == 0.0


def test_lora_on_gpt2_conv1d_matches_merge(tiny_gpt2):
    model = _with_random_b(_lora(tiny_gpt2(), targets=("c_attn", "c_fc"), fan_in_fan_out=True))
    merged = copy.deepcopy(model).merge_and_unload()
    assert layer_norms(model).to_dict() == pytest.approx(layer_norms(merged).to_dict(), rel=1e-6)
    deltas = [
        m.get_delta_weight("default")
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and ".h.2." in n and "default" in m.lora_A
    ]
    assert layer_norms(model, kind="delta")["block.2"] == pytest.approx(_direct(deltas), rel=1e-6)


def test_each_lora_adapter_counted_in_its_own_block(tiny_llama):
    model = _lora(tiny_llama())
    layer_map = LayerMap.from_model(model)
    before = layer_norms(model, layer_map, kind="trainable")
    assert list(before.index) == [f"block.{i}" for i in range(4)]  # only adapters train
    for index in range(4):
        adapters = [
            p for n, p in model.named_parameters() if "lora_" in n and f".layers.{index}." in n
        ]
        assert len(adapters) == 6  # A and B of three modules
        assert before[f"block.{index}"] == pytest.approx(_direct(adapters), rel=RTOL)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name and ".layers.2." in name:
                parameter.mul_(3.0)
    after = layer_norms(model, layer_map, kind="trainable")
    changed = [g for g in after.index if not math.isclose(after[g], before[g], rel_tol=1e-12)]
    assert changed == ["block.2"]


def test_delta_is_zero_before_the_first_step(tiny_llama):
    model = tiny_llama()
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    ft = layer_norms(model, kind="delta", reference=reference)
    assert (ft == 0.0).all() and len(ft) == 7
    lora = layer_norms(_lora(tiny_llama()), kind="delta")  # peft initialises B = 0
    assert (lora == 0.0).all()


def test_delta_against_reference_model_after_an_update(tiny_llama):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model.model.layers[3].mlp.up_proj.weight.add_(0.5)
    delta = layer_norms(model, kind="delta", reference=reference)
    numel = model.model.layers[3].mlp.up_proj.weight.numel()
    assert delta["block.3"] == pytest.approx(0.5 * math.sqrt(numel), rel=1e-6)
    assert delta.drop("block.3").eq(0.0).all()


def test_delta_with_reference_on_lora_model_uses_plain_names(tiny_llama):
    base = tiny_llama()
    model = _with_random_b(_lora(base))
    with_reference = layer_norms(model, kind="delta", reference=base)
    without = layer_norms(model, kind="delta")
    assert with_reference.to_dict() == pytest.approx(without.to_dict(), rel=1e-12)


def test_delta_on_plain_model_needs_reference(tiny_llama):
    with pytest.raises(ValueError, match="reference"):
        layer_norms(tiny_llama(), kind="delta")


@pytest.mark.parametrize(("kind", "reduce"), [("norm", "l2"), ("weight", "max")])
def test_unknown_kind_or_reduction_is_refused(tiny_llama, kind, reduce):
    with pytest.raises(ValueError, match="is not one of"):
        layer_norms(tiny_llama(), kind=kind, reduce=reduce)


def test_norms_do_not_build_a_graph(tiny_llama):
    model = tiny_llama()
    norms = layer_norms(model)
    assert norms.dtype == "float64"
    assert all(p.grad is None for p in model.parameters())
