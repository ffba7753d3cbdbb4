"""Several processes for the commands: launch checks, the process group, rank 0 as the writer.

``lisa train``, ``lisa diagnose``, ``lisa demo`` and ``lisa study`` run in several processes
when started by ``torchrun`` (or ``accelerate launch``), which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process. Every rank computes; rank 0 alone
writes results (and sends what it alone decides to the others); every rank reports its own
memory. The backend is NCCL on CUDA and gloo on the CPU; a CUDA rank uses device LOCAL_RANK.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

__all__ = [
    "DISTRIBUTED_MODES",
    "LAUNCH_VARIABLES",
    "broadcast_from_rank_zero",
    "device_mesh",
    "gather_from_ranks",
    "is_main_process",
    "launched_world_size",
    "rank_and_world",
    "rank_device",
    "run_in_process_group",
    "setup_process_group",
]

T = TypeVar("T")

DISTRIBUTED_MODES = ("ddp", "fsdp2")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size(environ: Mapping[str, str] | None = None) -> int | None:
    """WORLD_SIZE when this process was started by torchrun (all launch variables set), else None.

    Example:
        >>> launched_world_size({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
        ...                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
        2
        >>> launched_world_size({}) is None
        True
    """
    environ = os.environ if environ is None else environ
    if not all(environ.get(name) for name in LAUNCH_VARIABLES):
        return None
    try:
        return int(environ["WORLD_SIZE"])
    except ValueError:
        return None


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank(), distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and outside a process group): the process that writes results."""
    return rank_and_world()[0] == 0


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise."""
    if device.type != "cuda":
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
            "devices; start at most that many processes per node"
        )
    return torch.device("cuda", local_rank)


def device_mesh(device: torch.device):
    """A 1-D mesh of every rank on ``device``'s type: where FSDP2 places the shards.

    fully_shard's default mesh is CUDA whenever CUDA is present; a run asked to compute on the
    CPU passes this mesh instead.
    """
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def setup_process_group(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU).

    Returns:
        this rank's device (``cuda:LOCAL_RANK`` or the CPU).
    """
    device = rank_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return device


def gather_from_ranks(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a list of one outside a process group)."""
    _, world = rank_and_world()
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def broadcast_from_rank_zero(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside a process group).

    For what rank 0 alone decides or reads from ``--out`` (a derived policy, the runs a resumed
    study still has to train), so that every rank takes the same next step.
    """
    _, world = rank_and_world()
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_in_process_group(work: Callable[[], T], device: torch.device) -> T:
    """Join the process group, wait for every rank, run ``work``, leave the group.

    The barrier comes first so that no rank starts (and rank 0 opens ``--out``) before every
    rank has joined, i.e. has passed its own input checks.
    """
    setup_process_group(device)
    try:
        torch.distributed.barrier()
        return work()
    finally:
        torch.distributed.destroy_process_group()
