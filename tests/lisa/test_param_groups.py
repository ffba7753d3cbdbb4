"""lisa.param_groups: a rate and a weight decay per layer group, and the engine on several groups."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from lisa import LayerMap, Lisa, LisaConfig, memory_report, param_groups
from lisa_apps.models import load_model

RATES = {"lr": 1e-3, "lr_embed": 2e-2, "lr_head": 5e-3, "lr_extras": 3e-4}
# Adam's first step moves a parameter by lr * g / (|g| + eps) = lr / (1 + 1e-8) for |g| = 1.
# The parameters of the tiny model are below 1.25 in magnitude, so p and p - lr are float32
# numbers whose spacing is at most 2^-23; rounding the new value and the difference costs at
# most one spacing each: 2 * 2^-23 < 2.5e-7, far below the smallest rate (3e-4) compared.
STEP_TOLERANCE = 2.5e-7


def _kind(layer_map: LayerMap, name: str) -> str:
    group = layer_map.group_of(name)
    return "blocks" if group.startswith("block.") else group


def _unit_gradients(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        signs = torch.randint(0, 2, parameter.shape, generator=generator) * 2 - 1
        parameter.grad = signs.to(parameter.dtype)


def test_each_group_steps_at_its_own_rate():
    model, _ = load_model("tiny-llama")
    layer_map = LayerMap.from_model(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, **RATES), betas=(0.9, 0.999), eps=1e-8)
    _unit_gradients(model)
    optimizer.step()
    expected_rate = {
        "embed": RATES["lr_embed"],
        "blocks": RATES["lr"],
        "head": RATES["lr_head"],
        "extras": RATES["lr_extras"],
    }
    for name, parameter in model.named_parameters():
        rate = expected_rate[_kind(layer_map, name)]
        expected = before[name] - rate * parameter.grad
        torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=STEP_TOLERANCE)


def test_weight_decay_per_group_spares_one_dimensional_parameters():
    model, _ = load_model("tiny-llama")
    layer_map = LayerMap.from_model(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    decays = {"embed": 0.5, "blocks": 0.1, "head": 0.0, "extras": 0.2}
    groups = param_groups(
        model, lr=1e-2, weight_decay=decays["blocks"], weight_decay_embed=decays["embed"],
        weight_decay_head=decays["head"], weight_decay_extras=decays["extras"],
    )  # fmt: skip
    optimizer = torch.optim.AdamW(groups)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # Adam's update is 0: decay alone moves
    optimizer.step()
    for name, parameter in model.named_parameters():
        decay = 0.0 if parameter.ndim < 2 else decays[_kind(layer_map, name)]
        # AdamW multiplies by (1 - lr * wd): one float32 rounding of a value below 1.25.
        torch.testing.assert_close(
            parameter.detach(), before[name] * (1 - 1e-2 * decay), rtol=0, atol=2**-22
        )


def test_groups_partition_the_trainable_parameters():
    model, _ = load_model("tiny-llama")
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    groups = param_groups(model, lr=1e-4)
    placed = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)
    assert id(model.model.layers[0].mlp.up_proj.weight) not in placed


def test_tied_model_takes_the_embedding_rate_and_refuses_another_head_rate():
    model, _ = load_model("tiny-gpt2")
    assert LayerMap.from_model(model).tied
    groups = param_groups(model, lr=1e-4, lr_embed=1e-3)
    tied = model.get_input_embeddings().weight
    (embed,) = [g for g in groups if any(p is tied for p in g["params"])]
    assert embed["name"] == "embed" and embed["lr"] == 1e-3
    with pytest.raises(ValueError, match=r"lr_head=0\.01 differs from lr_embed=0\.001"):
        param_groups(model, lr=1e-4, lr_embed=1e-3, lr_head=1e-2)
    with pytest.raises(ValueError, match="weight_decay_head"):
        param_groups(model, lr=1e-4, weight_decay_head=0.1)
    assert param_groups(model, lr=1e-4, lr_embed=1e-3, lr_head=1e-3)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"lr": 0}, "lr=0"),
        ({"lr": 1e-4, "lr_embed": -1.0}, "lr_embed=-1.0"),
        ({"lr": 1e-4, "weight_decay_extras": -0.1}, "weight_decay_extras=-0.1"),
    ],
)
def test_bad_rates_are_refused_naming_the_setting(settings, match):
    model, _ = load_model("tiny-llama")
    with pytest.raises(ValueError, match=match):
        param_groups(model, **settings)


def test_dropped_state_stays_dropped_in_every_group():
    model, _ = load_model("tiny-llama")
    groups = param_groups(model, **RATES)
    optimizer = torch.optim.AdamW(groups)
    lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=1, seed=3, state_policy="drop"))
    ids = torch.arange(16).reshape(2, 8)
    for _ in range(4):
        lisa.begin_step()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trained = {id(p) for p in lisa.trainable_parameters()}
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                # Trained parameters hold state after the step; frozen ones none.
                assert (parameter in optimizer.state) == (id(parameter) in trained), group["name"]
    # The groups and their rates are untouched by switching.
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        (g["name"], g["lr"]) for g in groups
    ]
    assert len({blocks for _, blocks in lisa.history}) > 1


def test_memory_report_bytes_do_not_depend_on_the_grouping():
    model, _ = load_model("tiny-llama")
    twin = copy.deepcopy(model)
    reports = []
    for m, optimizer in (
        (model, torch.optim.AdamW(model.parameters(), lr=1e-3)),
        (twin, torch.optim.AdamW(param_groups(twin, **RATES))),
    ):
        lisa = Lisa(m, optimizer, LisaConfig(gamma=2, interval=2, seed=0))
        lisa.begin_step()
        _unit_gradients(m)
        for parameter in m.parameters():
            if not parameter.requires_grad:
                parameter.grad = None
        optimizer.step()
        reports.append(memory_report(m, optimizer))
    pd.testing.assert_frame_equal(reports[0], reports[1])
    assert reports[0].set_index("group").loc["total", "optimizer_state_bytes"] > 0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_lisa_estimate_equals_memory_report_of_a_run_on_several_groups(name):
    from lisa_apps.estimate.accounting import Setup
    from lisa_apps.estimate.plan import estimate
    from lisa_apps.tiny import build_tiny_model, tiny_config

    model = build_tiny_model(name, seed=0)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3, lr_embed=1e-2, lr_extras=3e-4))
    lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=1, state_policy="drop"))
    for step in range(4):  # a switch at every step: several switches before the measurement
        lisa.begin_step()
        ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        if step < 3:
            optimizer.zero_grad(set_to_none=True)
    total = memory_report(model, optimizer).set_index("group").loc["total"]
    (row,) = estimate(tiny_config(name), [Setup("lisa", "float32", gamma=2)])
    keys = ("trainable_parameters", "parameter_bytes", "grad_bytes", "optimizer_state_bytes")
    assert {key: int(total[key]) for key in keys} == {key: row[key] for key in keys}
