"""Whether lisa diagnose's LoRA probe under FSDP2 keeps a replica per rank or is sharded.

A replica (DDP) is the simple way: the adapters are small, so only the frozen base model is
large, and every rank holding it costs nothing in communication. It is taken when it fits:
``lisa estimate``'s figures for a LoRA run of one rank (weights, grads and AdamW state of the
adapters, activations of the rank's share of the batch; on the CPU also the full-copy load's
peak, which is in the same memory) against what the rank has: the device's total memory on
CUDA, the available RAM shared by the node's ranks (``MemAvailable / LOCAL_WORLD_SIZE``) on the
CPU. Otherwise the base model is sharded with FSDP2 like the FT probe's (and loaded shard by
shard from a safetensors folder).

The decision itself, :func:`auto_layout`, is a pure function of the two numbers; every rank
takes the smallest rank's available memory, so all ranks decide alike.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LORA_PROBE_LAYOUTS", "LoraProbeLayout", "auto_layout", "choose_lora_probe_layout"]

logger = logging.getLogger(__name__)

#: What ``--lora-probe`` accepts: decide from the estimate, or force one layout.
LORA_PROBE_LAYOUTS = ("auto", "replicated", "sharded")


@dataclass(frozen=True)
class LoraProbeLayout:
    """The LoRA probe's layout under FSDP2 and why (recorded in norms.json).

    Attributes:
        layout: "replicated" (DDP, a full copy per rank) or "sharded" (FSDP2).
        requested: what was asked ("auto", "replicated" or "sharded").
        estimated_bytes: a replica's estimated bytes on one rank (None: not estimated).
        available_bytes: what one rank has (None: not measured).
        available_measure: what ``available_bytes`` measures.
        reason: one line saying why.
    """

    layout: str
    requested: str
    estimated_bytes: int | None = None
    available_bytes: int | None = None
    available_measure: str | None = None
    reason: str = ""


def auto_layout(estimated_bytes: int, available_bytes: int) -> str:
    """``"replicated"`` when a replica's estimated bytes fit the rank's, else ``"sharded"``.

    Example:
        >>> auto_layout(2 * 2**30, 80 * 2**30), auto_layout(81 * 2**30, 80 * 2**30)
        ('replicated', 'sharded')
    """
    return "replicated" if estimated_bytes <= available_bytes else "sharded"


def replica_bytes(config, *, precision: str, rank: int, batch_size: int, seq_len: int,
                  gradient_checkpointing: bool, device: torch.device) -> int:  # fmt: skip
    """One rank's estimated bytes of a LoRA replica (``lisa estimate``'s LoRA row, one rank).

    On CUDA what the device holds while training; on the CPU the larger of that and the
    full-copy load's peak (both in RAM).
    """
    from lisa_apps.estimate import Setup, Workload, estimate

    workload = Workload(
        batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing
    )
    row = estimate(config, [Setup("lora", precision, lora_rank=rank)], workload)[0]
    training = row["total_with_activations_bytes"]
    return training if device.type == "cuda" else max(training, row["load_full_copy_bytes"])


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes one rank has, what they measure): CUDA total memory, or available RAM per rank."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"total memory of {device}"
    ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return _available_ram() // ranks, f"available RAM / LOCAL_WORLD_SIZE {ranks}"


def _available_ram() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the free pages sysconf reports."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_lora_probe_layout(
    requested: str, config: Any, settings, device: torch.device, world: int
) -> LoraProbeLayout:
    """The LoRA probe's layout for ``requested`` ("auto" decides from the estimate).

    Args:
        requested: "auto", "replicated" or "sharded".
        config: the model's transformers config (None: auto cannot estimate, so replicates).
        settings: the :class:`lisa_apps.pipeline.DiagnoseSettings` (precision, rank, batch).
        device: this rank's device.
        world: the number of ranks (each trains batch_size / world sequences).
    """
    if requested not in LORA_PROBE_LAYOUTS:
        raise ValueError(f"lora_probe={requested!r} is not one of {LORA_PROBE_LAYOUTS}")
    if requested != "auto":
        return LoraProbeLayout(requested, requested, reason=f"asked for {requested}")
    if config is None:
        return LoraProbeLayout(
            "replicated", requested,
            reason="no config to estimate from (a model function); pass a model name, or "
            "lora_probe='sharded'",
        )  # fmt: skip
    from lisa_apps.training.distributed import gather_from_ranks

    estimated = replica_bytes(
        config, precision=settings.precision, rank=settings.rank,
        batch_size=max(settings.batch_size // world, 1), seq_len=settings.max_length,
        gradient_checkpointing=settings.gradient_checkpointing, device=device,
    )  # fmt: skip
    available, measure = available_bytes(device)
    available = min(gather_from_ranks(available))  # the tightest rank: every rank agrees
    layout = auto_layout(estimated, available)
    relation = "fits in" if layout == "replicated" else "exceeds"
    reason = (
        f"a replica's estimated {estimated / 2**30:.2f} GiB {relation} the "
        f"{available / 2**30:.2f} GiB of the {measure}"
    )
    return LoraProbeLayout(layout, requested, estimated, available, measure, reason)
