"""Rank body for tests/lisa_apps/test_group_rates.py: one FSDP2 step of the plain loop on 2 gloo
ranks (started with torch.multiprocessing spawn, so importable by name from the repository root).
"""

from __future__ import annotations

import os

import torch


def fsdp2_step(rank: int, world: int, port: int, path: str, rates: dict, settings: dict) -> None:
    """Train tiny Llama one step under FSDP2; rank 0 saves each parameter's largest move."""
    from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
    from lisa_apps.models import load_model
    from lisa_apps.training import FinetuneConfig
    from lisa_apps.training.loop import train_loop

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, tokenizer = load_model("tiny-llama")
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        config = FinetuneConfig(method="ft", distributed="fsdp2", **settings, **rates)
        features = tokenize_examples(make_math_problems(2), tokenizer, max_length=384)
        run = train_loop(
            model, features, DataCollator(tokenizer), config, device=torch.device("cpu"),
            precision="float32",
        )  # fmt: skip
        moves = {}
        for name, parameter in run.model.named_parameters():
            full = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            moves[name] = float((full.detach() - before[name]).abs().max())
        sharded = any(hasattr(p, "placements") for p in run.model.parameters())
        if rank == 0:
            torch.save({"moves": moves, "sharded": sharded}, path)
    finally:
        torch.distributed.destroy_process_group()
