"""Checkpoints of the FSDP2 loop: sharded state through torch.distributed.checkpoint (DCP).

A checkpoint is the Trainer's ``checkpoint-N/`` folder (:mod:`lisa_apps.training.checkpoints`),
so ``--resume auto`` and ``--save-total-limit`` treat both paths alike:

    checkpoint-N/
      dcp/                    model and AdamW state, one ``__R_0.distcp`` file per rank + .metadata
      scheduler.pt            the learning-rate scheduler (rank 0)
      rng_state_R.pth         torch, numpy and python RNG states of rank R
      trainer_state.json      step, log history, LISA's schedule, world size (rank 0, last)

``trainer_state.json`` is written last, after every rank has finished its shards, so a folder
without it is incomplete (the rule :func:`lisa_apps.training.checkpoints.latest_checkpoint`
uses for the Trainer's checkpoints too). Under LISA only the active set's AdamW state exists,
so only that is saved. The data position is the step: each step's batches come from
:func:`lisa_apps.training.loop.global_batches` by step.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lisa_apps.training.checkpoints import CHECKPOINT_PATTERN, TRAINER_STATE

__all__ = ["DCP_FOLDER", "check_checkpoint_kind", "load_checkpoint", "save_checkpoint"]

DCP_FOLDER = "dcp"
SCHEDULER = "scheduler.pt"


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pth"


def save_checkpoint(
    path: Path, *, step: int, model, optimizer, scheduler, lisa, log_history: list[dict],
    rank: int, world: int, total_limit: int | None = None,
) -> None:  # fmt: skip
    """Write ``path`` (a ``checkpoint-N`` folder) from every rank; a collective.

    Rank 0 writes the small parts and, once every rank's shards are on disk, trainer_state.json;
    then it deletes the oldest complete checkpoints beyond ``total_limit``.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path.mkdir(parents=True, exist_ok=True)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path / DCP_FOLDER)
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save(rng, path / _rng_file(rank))
    if rank == 0:
        torch.save(scheduler.state_dict(), path / SCHEDULER)
    _barrier()  # every rank's shards and RNG are written before the marker
    if rank == 0:
        state = {
            "global_step": step,
            "log_history": log_history,
            "world_size": world,
            "distributed": "fsdp2",
            "stateful_callbacks": {} if lisa is None else {"LisaCallback": lisa.state_dict()},
        }
        marker = path / TRAINER_STATE
        partial = marker.with_suffix(".json.partial")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        partial.replace(marker)  # atomic: the marker exists whole or not at all
        if total_limit is not None:
            _rotate(path.parent, total_limit)
    _barrier()


def _rotate(folder: Path, total_limit: int) -> None:
    """Delete the oldest complete checkpoints beyond ``total_limit`` (the newest is complete)."""
    complete = sorted(
        (int(match.group(1)), entry)
        for entry in folder.iterdir()
        if (match := CHECKPOINT_PATTERN.match(entry.name)) and (entry / TRAINER_STATE).is_file()
    )
    for _, entry in complete[: max(len(complete) - total_limit, 0)]:
        shutil.rmtree(entry, ignore_errors=True)


def check_checkpoint_kind(path: Path, *, distributed: str | None, world: int) -> None:
    """Refuse (ValueError, before any work) a checkpoint this run cannot load.

    An FSDP2 checkpoint resumes under FSDP2 on the world size that wrote it (DCP could reshard,
    but the data slices and RNG states are per rank); a Trainer checkpoint resumes on the
    Trainer's path.
    """
    state = json.loads((Path(path) / TRAINER_STATE).read_text())
    written_by_loop = state.get("distributed") == "fsdp2"
    if written_by_loop and distributed != "fsdp2":
        raise ValueError(
            f"--resume {path} is an FSDP2 checkpoint (sharded, {DCP_FOLDER}/); resume it with "
            f"torchrun --nproc_per_node {state['world_size']} ... --distributed fsdp2"
        )
    if not written_by_loop and distributed == "fsdp2":
        raise ValueError(
            f"--resume {path} is a Trainer checkpoint; resume it without --distributed fsdp2 "
            "(one process or --distributed ddp)"
        )
    if written_by_loop and state["world_size"] != world:
        raise ValueError(
            f"--resume {path} was written by {state['world_size']} ranks, this run has {world}; "
            f"resume it with torchrun --nproc_per_node {state['world_size']}"
        )


def load_checkpoint(path: Path, *, model, optimizer, scheduler, lisa, rank: int, world: int):
    """Load ``path`` into the freshly sharded ``model`` and its ``optimizer``; a collective.

    Returns:
        (step, log_history) of the checkpoint; the loop continues at that step.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    state = json.loads((path / TRAINER_STATE).read_text())
    if state.get("distributed") != "fsdp2" or not (path / DCP_FOLDER).is_dir():
        raise ValueError(
            f"resume_from={path} is a Trainer checkpoint, not an FSDP2 one; resume it with "
            "distributed='ddp' or None"
        )
    if state["world_size"] != world:
        raise ValueError(
            f"resume_from={path} was written by {state['world_size']} ranks, this run has "
            f"{world}; resume it with torchrun --nproc_per_node {state['world_size']}"
        )
    step = int(state["global_step"])
    if lisa is not None:
        lisa.load_state_dict(state["stateful_callbacks"]["LisaCallback"])
        if step > 0:
            # Re-apply the saved active set (the last step's period: no draw), so the
            # optimizer's state template below covers exactly the parameters that have state.
            lisa.begin_step(step - 1)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(target, checkpoint_id=path / DCP_FOLDER)
    set_state_dict(
        model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"]
    )
    scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
    rng = torch.load(path / _rng_file(rank), weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return step, list(state["log_history"])
