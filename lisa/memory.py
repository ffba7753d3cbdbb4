"""Exact byte accounting of parameters, grads and optimizer state, per layer group.

Bytes are sums of tensor storages, each storage counted once (views and tied weights share
one), so the numbers are what the tensors actually hold, not estimates. A DTensor (a parameter
sharded by FSDP2, its grad, its optimizer state) counts the local shard this rank holds: the
figures are per rank, and ``memory_report`` says so in its ``attrs["scope"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lisa.layers import LayerMap

if TYPE_CHECKING:  # pandas loads when a report is made, not with `import lisa`
    import pandas as pd

__all__ = [
    "grad_bytes",
    "local_tensor",
    "memory_report",
    "minimum_optimizer_state_bytes",
    "optimizer_state_bytes",
    "parameter_bytes",
    "tensor_bytes",
]

REPORT_COLUMNS = (
    "group",
    "num_parameters",
    "trainable_parameters",
    "parameter_bytes",
    "grad_bytes",
    "optimizer_state_bytes",
)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    # By duck type, so that plain models never import torch.distributed.tensor.
    return hasattr(tensor, "to_local") and hasattr(tensor, "placements")


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds: a DTensor's local shard, else the tensor.

    Example:
        >>> t = torch.zeros(3)
        >>> local_tensor(t) is t
        True
    """
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by `tensors`, each underlying storage counted once.

    bytes = sum over distinct storages s of nbytes(s)

    Args:
        tensors: any tensors (views of one storage count that storage once; a DTensor counts
            the storage of its local shard, e.g. FSDP2's padded shard or flat grad buffer).

    Returns:
        the number of bytes.

    Example:
        >>> t = torch.zeros(4)
        >>> tensor_bytes([t, t[:2]])
        16
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in tensors:
        storage = local_tensor(tensor).untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if storage.data_ptr() == 0:
            # Zero-size tensors share the null pointer; they hold nothing.
            continue
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def _state_tensors(state: Mapping[str, Any]) -> list[torch.Tensor]:
    return [value for value in state.values() if isinstance(value, torch.Tensor)]


def parameter_bytes(parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of the parameters themselves (storages counted once).

    Example:
        >>> parameter_bytes(nn.Linear(2, 3).parameters())
        36
    """
    return tensor_bytes(parameters)


def grad_bytes(parameters: Iterable[torch.Tensor]) -> int:
    """Bytes of the `.grad` tensors currently held by `parameters`.

    Example:
        >>> grad_bytes(nn.Linear(2, 3).parameters())
        0
    """
    return tensor_bytes(p.grad for p in parameters if p.grad is not None)


def optimizer_state_bytes(
    optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor] | None = None
) -> int:
    """Bytes of optimizer state (tensors in optimizer.state[p]) for `parameters` or all.

    Args:
        optimizer: any torch optimizer (or a wrapper exposing `.state`).
        parameters: restrict to these parameters; None counts every entry of the state.

    Returns:
        the number of bytes, each storage counted once.

    Example:
        >>> optimizer_state_bytes(torch.optim.AdamW(nn.Linear(2, 3).parameters()))
        0
    """
    state = optimizer.state
    if parameters is None:
        entries = list(state.values())
    else:
        entries = [state[p] for p in parameters if p in state]
    return tensor_bytes(t for entry in entries for t in _state_tensors(entry))


# Per-parameter state of the stock optimizers: (tensors shaped like the parameter, scalar bytes).
# AdamW/Adam keep exp_avg and exp_avg_sq plus a float32 "step" scalar; SGD with momentum keeps
# one momentum buffer.
_STATE_LAYOUT = {
    "adamw": (2, 4),
    "adam": (2, 4),
    "sgd_momentum": (1, 0),
}


def minimum_optimizer_state_bytes(
    parameters: Iterable[torch.Tensor], optimizer: str = "adamw"
) -> int:
    """Least optimizer state a stock optimizer needs for `parameters` (those that trained).

    bytes = sum_p (k * numel(p) * itemsize(p) + scalar_bytes), with (k, scalar_bytes) =
    (2, 4) for "adamw"/"adam" (two moments + float32 step) and (1, 0) for "sgd_momentum".
    For a DTensor parameter numel is that of this rank's local shard (its state is sharded
    alike; the step scalar is a plain tensor on every rank).

    Args:
        parameters: the parameters that hold state (the active set after a step).
        optimizer: "adamw", "adam" or "sgd_momentum".

    Returns:
        the number of bytes.

    Example:
        >>> minimum_optimizer_state_bytes(nn.Linear(2, 3).parameters())
        80
    """
    if optimizer not in _STATE_LAYOUT:
        raise ValueError(f"optimizer={optimizer!r} is unknown; use one of {tuple(_STATE_LAYOUT)}")
    copies, scalar = _STATE_LAYOUT[optimizer]
    unique = [local_tensor(p) for p in {id(p): p for p in parameters}.values()]
    return sum(copies * p.numel() * p.element_size() + scalar for p in unique)


def memory_report(
    model: nn.Module, optimizer: torch.optim.Optimizer, layer_map: LayerMap | None = None
) -> pd.DataFrame:
    """Exact bytes of parameters, grads and optimizer state per layer group, plus a total.

    Args:
        model: the model.
        optimizer: its optimizer (state read from optimizer.state).
        layer_map: LayerMap of `model`; built with LayerMap.from_model when None.

    Returns:
        DataFrame with columns group, num_parameters, trainable_parameters (elements with
        requires_grad), parameter_bytes, grad_bytes, optimizer_state_bytes; one row per group
        in LayerMap order, then "total" (storages counted once over the whole model). Element
        counts are the model's; under FSDP2 the byte columns count this rank's local shards
        only, and ``report.attrs["scope"]`` says which (``"whole tensors"`` otherwise).

    Example:
        >>> from lisa_apps.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> report = memory_report(model, optimizer).set_index("group")
        >>> report.index.tolist()
        ['embed', 'block.0', 'block.1', 'block.2', 'block.3', 'head', 'extras', 'total']
        >>> int(report.loc["total", "grad_bytes"])  # no backward pass yet
        0
        >>> report.attrs["scope"]
        'whole tensors'
    """
    import pandas as pd

    layer_map = LayerMap.from_model(model) if layer_map is None else layer_map
    rows = []
    for group in layer_map.group_names:
        params = [p for _, p in layer_map.parameters(group)]
        rows.append(_row(group, params, optimizer))
    everything = list(model.parameters())
    total = _row("total", everything, optimizer)
    # State of tensors that are not model parameters (rare) still takes memory.
    total["optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
    rows.append(total)
    report = pd.DataFrame(rows, columns=list(REPORT_COLUMNS))
    report.attrs["scope"] = _scope(everything)
    return report


def _scope(parameters: list[torch.Tensor]) -> str:
    """What the byte columns count: whole tensors, or one rank's shards of DTensors."""
    if not any(_is_dtensor(p) for p in parameters):
        return "whole tensors"
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return (
        f"local shards of rank {rank} of {world}: bytes of DTensor parameters, grads and "
        "optimizer state held by this rank; element counts are the whole model's"
    )


def _row(group: str, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> dict:
    unique = list({id(p): p for p in params}.values())
    return {
        "group": group,
        "num_parameters": sum(p.numel() for p in unique),
        "trainable_parameters": sum(p.numel() for p in unique if p.requires_grad),
        "parameter_bytes": parameter_bytes(unique),
        "grad_bytes": grad_bytes(unique),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer, unique),
    }
