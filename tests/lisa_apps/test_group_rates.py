"""A learning rate per layer group on the run paths: transformers.Trainer and the plain loop."""

from __future__ import annotations

import pytest
import torch

from lisa import LayerMap
from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
from lisa_apps.models import load_model
from lisa_apps.training import FinetuneConfig, finetune
from lisa_apps.training.loop import train_loop

RATES = {"learning_rate": 2e-3, "lr_embed": 1e-2, "lr_head": 5e-3, "lr_extras": 4e-2}
# One AdamW step from zero state moves an element by lr * |g| / (|g| + eps), eps = 1e-8; the
# element with the largest gradient of each parameter (|g| > 1e-5 here, no clipping) moves by lr
# within a relative 1e-3. Float32 rounding of p - lr for |p| < 2 costs 2 * 2^-23 < 2.4e-7,
# relative 1.2e-4 of the smallest rate 2e-3. 1e-2 covers both and separates rates 2x apart.
RATE_TOLERANCE = 1e-2


def _kind(layer_map: LayerMap, name: str) -> str:
    group = layer_map.group_of(name)
    return "blocks" if group.startswith("block.") else group


def _largest_moves(model, before) -> dict[str, float]:
    return {
        name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()
    }


def _expected(kind: str) -> float:
    return {
        "embed": RATES["lr_embed"],
        "blocks": RATES["learning_rate"],
        "head": RATES["lr_head"],
        "extras": RATES["lr_extras"],
    }[kind]


# A constant rate: one step, no warm-up (the default's would make it a step at rate 0).
SETTINGS = dict(steps=1, batch_size=2, max_length=384, max_grad_norm=0.0, score_accuracy=False,
                lr_scheduler="constant")  # fmt: skip


def test_trainer_steps_each_group_at_its_rate():
    model, tokenizer = load_model("tiny-llama")
    layer_map = LayerMap.from_model(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = FinetuneConfig(method="ft", **SETTINGS, **RATES)
    result = finetune(
        model, tokenizer, make_math_problems(2), make_math_problems(1, split="test"), config,
        progress=False, evaluate_before=False,
    )  # fmt: skip
    moves = _largest_moves(result.model, before)
    for name, move in moves.items():
        assert move == pytest.approx(_expected(_kind(layer_map, name)), rel=RATE_TOLERANCE), name
    assert result.metrics["settings"]["lr_embed"] == RATES["lr_embed"]


def test_plain_loop_steps_each_group_at_its_rate_and_lisa_freezes_the_rest():
    from lisa import LisaConfig

    model, tokenizer = load_model("tiny-llama")
    layer_map = LayerMap.from_model(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lisa = LisaConfig(gamma=1, interval=5, seed=0)
    config = FinetuneConfig(method="lisa", lisa=lisa, **SETTINGS, **RATES)
    features = tokenize_examples(make_math_problems(2), tokenizer, max_length=384)
    run = train_loop(
        model, features, DataCollator(tokenizer), config, device=torch.device("cpu"),
        precision="float32",
    )  # fmt: skip
    (active,) = run.lisa.active_blocks
    names = {g["name"] for g in run.optimizer.param_groups}
    assert {"embed", "blocks", "head", "extras/no_decay"} <= names
    for name, move in _largest_moves(model, before).items():
        group = layer_map.group_of(name)
        if group.startswith("block.") and group != f"block.{active}":
            assert move == 0.0, name
        else:
            assert move == pytest.approx(_expected(_kind(layer_map, name)), rel=RATE_TOLERANCE)


def test_lora_refuses_group_rates():
    with pytest.raises(ValueError, match="LoRA trains no embedding"):
        FinetuneConfig(method="lora", lr_embed=1e-3)


def test_fsdp2_steps_each_group_at_its_rate(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from tests.lisa_apps import group_rates_workers

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "moves.pt"
    mp.start_processes(
        group_rates_workers.fsdp2_step, args=(2, port, str(path), RATES, SETTINGS), nprocs=2,
        start_method="spawn",
    )  # fmt: skip
    result = torch.load(path)
    assert result["sharded"]
    layer_map = LayerMap.from_model(load_model("tiny-llama")[0])
    for name, move in result["moves"].items():
        assert move == pytest.approx(_expected(_kind(layer_map, name)), rel=RATE_TOLERANCE), name
