"""Helpers for running LISA in several processes (torch.distributed).

Every rank must train the same blocks in every period: the engine draws from a generator seeded
identically on every rank, and ``check_same_draw`` verifies at each switch, with one small
collective, that the draws agree; a mismatch raises instead of training different blocks on
different ranks.
"""

from __future__ import annotations

import zlib

import torch

__all__ = ["check_same_draw", "is_distributed"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    distributed = torch.distributed
    return (
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    )


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_same_draw(active: tuple[int, ...]) -> tuple[int, ...]:
    """Return ``active`` after checking that every rank drew the same blocks.

    One all-reduce of two int64 numbers (a CRC-32 of the draw and its length, reduced with MIN
    and MAX): cheap enough to run at every switch. Outside a process group it does nothing.

    Raises:
        RuntimeError: the ranks drew different blocks (different seeds, samplers or resume
            states); training on would update different blocks on different ranks.

    Example:
        >>> check_same_draw((1, 3))  # no process group: returned as is
        (1, 3)
    """
    if not is_distributed():
        return active
    fingerprint = zlib.crc32(repr(tuple(active)).encode())
    device = _collective_device()
    low = torch.tensor([fingerprint, len(active)], dtype=torch.int64, device=device)
    high = low.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(
            f"rank {torch.distributed.get_rank()} drew blocks {active} but another rank drew "
            "different ones; give every rank the same LisaConfig (same seed and sampler) and "
            "the same resume state"
        )
    return active
