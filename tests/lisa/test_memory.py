"""Tests for lisa/memory.py: exact byte accounting per layer group."""

from __future__ import annotations

import pytest
import torch

from lisa.layers import LayerMap
from lisa.memory import (
    grad_bytes,
    memory_report,
    minimum_optimizer_state_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_bytes,
)


def one_step(model, optimizer) -> None:
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()


def test_tensor_bytes_counts_each_storage_once():
    base = torch.zeros(10)  # 40 bytes
    other = torch.zeros(3, dtype=torch.float64)  # 24 bytes
    assert tensor_bytes([base, base[2:5], base.view(2, 5), other]) == 40 + 24
    assert tensor_bytes([torch.zeros(0)]) == 0


def test_report_has_one_row_per_group_and_a_total(tiny_llama):
    model = tiny_llama()
    report = memory_report(model, torch.optim.AdamW(model.parameters()))
    layer_map = LayerMap.from_model(model)
    assert list(report["group"]) == [*layer_map.group_names, "total"]
    total = report.set_index("group").loc["total"]
    assert total["parameter_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert total["grad_bytes"] == 0 and total["optimizer_state_bytes"] == 0
    assert report["parameter_bytes"].iloc[:-1].sum() == total["parameter_bytes"]


def test_tied_weight_is_counted_once(tiny_gpt2):
    model = tiny_gpt2()
    report = memory_report(model, torch.optim.AdamW(model.parameters())).set_index("group")
    unique = {id(p): p for p in model.parameters()}.values()
    assert report.loc["total", "parameter_bytes"] == sum(p.numel() * 4 for p in unique)
    assert report["parameter_bytes"].drop("total").sum() == report.loc["total", "parameter_bytes"]


def test_adamw_state_after_a_step_equals_the_minimum(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    one_step(model, optimizer)
    params = list(model.parameters())
    expected = sum(2 * p.numel() * 4 + 4 for p in params)  # exp_avg, exp_avg_sq, step
    assert optimizer_state_bytes(optimizer) == expected
    assert minimum_optimizer_state_bytes(params, "adamw") == expected
    report = memory_report(model, optimizer).set_index("group")
    assert report.loc["total", "optimizer_state_bytes"] == expected
    assert report.loc["total", "grad_bytes"] == grad_bytes(params) == parameter_bytes(params)
    block = [p for _, p in LayerMap.from_model(model).parameters("block.1")]
    assert report.loc["block.1", "optimizer_state_bytes"] == sum(
        2 * p.numel() * 4 + 4 for p in block
    )


def test_sgd_momentum_state_equals_one_buffer_per_parameter(tiny_llama):
    model = tiny_llama()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    one_step(model, optimizer)
    params = list(model.parameters())
    assert optimizer_state_bytes(optimizer) == minimum_optimizer_state_bytes(params, "sgd_momentum")
    assert optimizer_state_bytes(optimizer) == sum(p.numel() * 4 for p in params)


def test_frozen_groups_report_no_trainable_elements(tiny_llama):
    model = tiny_llama()
    for p in model.model.layers[0].parameters():
        p.requires_grad_(False)
    report = memory_report(model, torch.optim.AdamW(model.parameters())).set_index("group")
    assert report.loc["block.0", "trainable_parameters"] == 0
    assert report.loc["block.1", "trainable_parameters"] == report.loc["block.1", "num_parameters"]


def test_minimum_state_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer='lion'"):
        minimum_optimizer_state_bytes([torch.zeros(2)], "lion")
