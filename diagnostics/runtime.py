"""Where and how a run computes: device, precision, activation checkpointing, peak memory.

One vocabulary for every probe, runner and command:

- device: ``None`` picks CUDA when it is present, else the CPU; ``"cuda"``, ``"cuda:1"`` and
  ``"cpu"`` are taken as given (an absent CUDA device is refused).
- precision: ``"float32"`` (weights, grads, optimizer state and compute in float32),
  ``"bf16-mixed"`` (float32 weights, grads and state; matmuls under bfloat16 autocast) or
  ``"bf16"`` (weights, grads and optimizer state in bfloat16).
- activation checkpointing: recompute each block's activations in the backward pass instead of
  keeping them (transformers' activation checkpointing, non-reentrant).
- peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the process's peak
  resident set size (VmHWM), reset at the start of the measured span where Linux allows it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "PeakMemory",
    "autocast",
    "check_precision",
    "prepare_model",
    "resolve_device",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bf16-mixed", "bf16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: CUDA when present and nothing is asked, else what is asked.

    Raises:
        ValueError: an unparsable device, or CUDA asked for on a machine without it.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a device; use cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asks for CUDA but this machine has none; use cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use cpu, cuda or cuda:N")
    return resolved


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """``precision`` if it is one of PRECISIONS (and the device computes bfloat16), else raise.

    Example:
        >>> check_precision("bf16-mixed")
        'bf16-mixed'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; use one of {PRECISIONS}")
    if (
        precision != "float32"
        and device is not None
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        raise ValueError(
            f"precision={precision!r} needs bfloat16, which this CUDA device does not support; "
            "use float32"
        )
    return precision


def prepare_model(
    model: nn.Module,
    *,
    device: torch.device,
    precision: str = "float32",
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Move ``model`` to ``device`` in the dtype ``precision`` asks for; switch checkpointing.

    Weights are bfloat16 under ``"bf16"`` and float32 otherwise. Checkpointing uses
    transformers' ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before
    transformers 5) with ``use_reentrant=False``: the re-entrant variant computes no grads for
    blocks whose input needs none.

    Returns:
        The same model, moved.
    """
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.to(device=device, dtype=dtype)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if callable(getattr(model, "activation_checkpointing_enable", None)):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif callable(getattr(model, "gradient_checkpointing_enable", None)):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise ValueError(
                f"{type(model).__name__} cannot checkpoint activations (no "
                "activation_checkpointing_enable); it needs a transformers model"
            )
        if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # a KV cache is pointless and refused with it
    return model


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``"bf16-mixed"``, nothing otherwise.

    Example:
        >>> with autocast(torch.device("cpu"), "float32"):
        ...     pass
    """
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _rss_high_water_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _release_freed_memory() -> None:
    """Hand memory that Python and glibc hold but no longer use back to the system.

    Without it, a measurement started after an earlier run in the same process (a study) begins
    from the earlier run's high resident set and is not comparable between runs.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_rss_high_water() -> bool:
    # Linux >= 4.0: writing 5 resets the peak RSS (VmHWM) to the current RSS.
    _release_freed_memory()
    try:
        with _CLEAR_REFS.open("w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory over a ``with`` block: CUDA allocator peak, or peak RSS on the CPU.

    Attributes after the block: ``peak_bytes``, ``measure`` (what was measured, in words) and
    ``since_start`` (False when the CPU peak could not be reset and covers the whole process).

    Example:
        >>> with PeakMemory(torch.device("cpu")) as peak:
        ...     _ = torch.zeros(1000)
        >>> peak.peak_bytes > 0
        True
    """

    device: torch.device
    peak_bytes: int = 0
    measure: str = ""
    since_start: bool = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.measure = "torch.cuda.max_memory_allocated"
        else:
            self.since_start = _reset_rss_high_water()
            self.measure = "peak RSS (VmHWM)" + ("" if self.since_start else " of the process")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.peak_bytes = self.read()

    def read(self) -> int:
        """The peak so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return _rss_high_water_bytes()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (None: leave torch's choice)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def environment_summary(device: torch.device) -> dict[str, object]:
    """Device and thread facts recorded beside results."""
    summary: dict[str, object] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        summary["device_name"] = torch.cuda.get_device_name(device)
    summary["cpu_count"] = os.cpu_count()
    return summary
