"""Exact bytes of one training setup (method x precision x ranks) from a model's tensor shapes.

Per parameter p with n elements (n_r on one rank under FSDP2, see :func:`shard_numel`):

    weights    n_r * bytes(dtype of p)                       every parameter
    grads      n_r * bytes(dtype of p)                       trained parameters only
    AdamW      2 * n_r * bytes(dtype of p) + 4               trained parameters (exp_avg,
                                                             exp_avg_sq and a float32 step)
    BAdam      n_r * 4 (float32 master copy) and AdamW state over that copy

The weight dtype is float32 for "float32" and "bf16-mixed" (bfloat16 autocast over float32
weights) and bfloat16 for "bf16"; peft keeps LoRA adapters in float32 even on a bfloat16 model,
which the accounting sees because it reads the dtypes of the (meta) tensors peft creates.
These are the tensors :func:`lisa.memory.memory_report` counts after a step of the same run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from diagnostics.runtime import PRECISIONS
from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LORA_RANK
from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap
from lisa.validation import check_int

__all__ = [
    "METHODS",
    "MemoryBytes",
    "Setup",
    "account",
    "shard_numel",
    "trained_parameters",
    "weight_dtype",
]

#: Methods an estimate covers: full fine-tuning, LoRA, LISA and BAdam (one block at a time).
METHODS = ("ft", "lora", "lisa", "badam")

# torch AdamW (non-fused, non-capturable): exp_avg and exp_avg_sq shaped like the parameter in
# its dtype, plus a 0-dim float32 "step" (on the host even when the parameter is on a GPU).
_ADAM_COPIES = 2
_STEP_BYTES = 4
_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Setup:
    """One row of an estimate: what trains, in which precision, on how many FSDP2 ranks.

    Args:
        method: "ft", "lora", "lisa" or "badam".
        precision: "float32", "bf16-mixed" or "bf16" (diagnostics.runtime.PRECISIONS).
        gamma: LISA's blocks per period (None elsewhere; defaults to DEFAULT_GAMMA for LISA).
        lora_rank: LoRA's rank r (None elsewhere; defaults to DEFAULT_LORA_RANK for LoRA).
        train_embeddings, train_head, train_extras: LISA's always-trained groups E, H, extras.
        fsdp_ranks: W, the FSDP2 world size; bytes are those of one rank (rank 0, the largest).

    Example:
        >>> Setup("lisa", "bf16").label
        'LISA E+H+extras+2'
    """

    method: str
    precision: str = "bf16-mixed"
    gamma: int | None = None
    lora_rank: int | None = None
    train_embeddings: bool = True
    train_head: bool = True
    train_extras: bool = True
    fsdp_ranks: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; use one of {METHODS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is unknown; use one of {PRECISIONS}")
        check_int("fsdp_ranks", self.fsdp_ranks, hint="FSDP2 world size")
        if self.method == "badam" and self.fsdp_ranks > 1:
            raise ValueError(
                f"fsdp_ranks={self.fsdp_ranks}: BAdam has no FSDP2 path (it distributes with "
                "DeepSpeed ZeRO-3, which partitions differently); estimate BAdam on one rank"
            )
        if self.method == "lisa":
            gamma = DEFAULT_GAMMA if self.gamma is None else self.gamma
            object.__setattr__(self, "gamma", check_int("gamma", gamma, minimum=0))
        elif self.gamma is not None:
            raise ValueError(
                f"gamma={self.gamma} applies to method 'lisa' only, not {self.method!r}"
            )
        if self.method == "lora":
            rank = DEFAULT_LORA_RANK if self.lora_rank is None else self.lora_rank
            object.__setattr__(self, "lora_rank", check_int("lora_rank", rank, hint="LoRA rank"))
        elif self.lora_rank is not None:
            raise ValueError(
                f"lora_rank={self.lora_rank} applies to method 'lora' only, not {self.method!r}"
            )

    @property
    def label(self) -> str:
        """A short name: "FT", "LoRA r8", "LISA E+H+extras+2", "BAdam 1 block"."""
        if self.method == "ft":
            return "FT"
        if self.method == "lora":
            return f"LoRA r{self.lora_rank}"
        if self.method == "badam":
            return "BAdam 1 block"
        groups = [
            name
            for name, on in (
                ("E", self.train_embeddings),
                ("H", self.train_head),
                ("extras", self.train_extras),
            )
            if on
        ]
        return "LISA " + "+".join([*groups, str(self.gamma)])


@dataclass(frozen=True)
class MemoryBytes:
    """Exact bytes of a setup on one rank, and what it trains.

    Attributes:
        trainable_parameters: elements that train (the whole model's count, not one rank's).
        parameter_bytes, grad_bytes, optimizer_state_bytes: as lisa.memory.memory_report
            reports them after a step (grads still held, before zero_grad).
        master_weight_bytes: float32 copies a method keeps of trained weights (BAdam), else 0.
        always_trained_parameters: elements of E, H and extras among the trained ones.
        blocks_trained: blocks that train at a time (all for FT and LoRA's adapters).
    """

    trainable_parameters: int
    parameter_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    master_weight_bytes: int
    always_trained_parameters: int
    blocks_trained: int

    @property
    def total_bytes(self) -> int:
        """Weights + grads + optimizer state + master copies."""
        return (
            self.parameter_bytes
            + self.grad_bytes
            + self.optimizer_state_bytes
            + self.master_weight_bytes
        )


def weight_dtype(precision: str) -> torch.dtype:
    """Dtype of the model's weights under ``precision``: bfloat16 for "bf16", else float32.

    Example:
        >>> weight_dtype("bf16-mixed")
        torch.float32
    """
    return torch.bfloat16 if precision == "bf16" else torch.float32


def shard_numel(shape: Iterable[int], ranks: int) -> int:
    """Elements rank 0 holds of a tensor of ``shape`` sharded on dim 0 over ``ranks`` (FSDP2).

    FSDP2 splits dim 0 as ``torch.chunk`` does and pads every rank's shard to the first
    chunk's size, so each rank holds ceil(d0 / W) rows:

        n_r = ceil(d0 / W) * prod(shape[1:])

    Args:
        shape: the full tensor's shape (at least one dimension).
        ranks: W >= 1.

    Returns:
        The element count of one rank's (padded) shard.

    Example:
        >>> shard_numel((10, 3), 4)  # rows 3, 3, 3, 1 -> every rank stores 3 rows
        9
    """
    dims = tuple(int(d) for d in shape)
    if not dims:
        return 1
    return math.ceil(dims[0] / ranks) * math.prod(dims[1:])


def trained_parameters(
    model: nn.Module, layer_map: LayerMap, setup: Setup
) -> tuple[list[nn.Parameter], int]:
    """The parameters ``setup`` trains at a time, and how many blocks they cover.

    FT: every parameter. LoRA: those that require grad after peft wrapped the model (the
    adapters). LISA: E, H and extras (each if on; a tied E/H matrix is E) plus the gamma
    largest blocks. BAdam: its largest block alone (E and H stay frozen, BAdam's default).
    Blocks of equal size make "largest" any draw; with unequal blocks it is the worst draw.

    Returns:
        (parameters, blocks trained), parameters unique.
    """
    if setup.method == "ft":
        return _unique(model.parameters()), layer_map.num_blocks
    if setup.method == "lora":
        return _unique(p for p in model.parameters() if p.requires_grad), layer_map.num_blocks
    blocks = sorted(
        range(layer_map.num_blocks),
        key=lambda index: (
            -_shard_bytes((p for _, p in layer_map.block_parameters(index)), setup.fsdp_ranks)
        ),
    )
    count = setup.gamma if setup.method == "lisa" else 1
    if count > layer_map.num_blocks:
        raise ValueError(
            f"gamma={count} is more than the model's {layer_map.num_blocks} blocks; use 0.."
            f"{layer_map.num_blocks}"
        )
    chosen = [p for index in blocks[:count] for _, p in layer_map.block_parameters(index)]
    if setup.method == "lisa":
        wanted = {EMBED: setup.train_embeddings, HEAD: setup.train_head, EXTRAS: setup.train_extras}
        for group, on in wanted.items():
            if on and group in layer_map.group_names:
                chosen += [p for _, p in layer_map.parameters(group)]
    return _unique(chosen), count


def account(model: nn.Module, layer_map: LayerMap, setup: Setup) -> MemoryBytes:
    """Exact bytes of ``setup`` on ``model`` (a meta model is enough: only shapes are read).

    Args:
        model: the model in the setup's weight dtype (:func:`weight_dtype`), wrapped with
            diagnostics.lora.wrap_lora for "lora".
        layer_map: its LayerMap.
        setup: the setup.

    Returns:
        The :class:`MemoryBytes` of one rank.

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> model = build_tiny_model("tiny-llama", device="meta")
        >>> bytes_ = account(model, LayerMap.from_model(model), Setup("ft", "float32"))
        >>> bytes_.optimizer_state_bytes == 2 * bytes_.parameter_bytes + 4 * len(list(model.parameters()))
        True
    """
    ranks = setup.fsdp_ranks
    everything = _unique(model.parameters())
    trained, blocks = trained_parameters(model, layer_map, setup)
    trained_bytes = _shard_bytes(trained, ranks)
    if setup.method == "badam":
        # BAdam trains a float32 clone of the active block (a clone even of float32 weights)
        # with the base optimizer; the model's own grads keep the weights' dtype until its step.
        master = sum(shard_numel(p.shape, ranks) * _FLOAT32_BYTES for p in trained)
        state = sum(
            _ADAM_COPIES * shard_numel(p.shape, ranks) * _FLOAT32_BYTES + _STEP_BYTES
            for p in trained
        )
    else:
        master = 0
        state = sum(_ADAM_COPIES * _tensor_shard_bytes(p, ranks) + _STEP_BYTES for p in trained)
    always = {
        id(p)
        for g in (EMBED, HEAD, EXTRAS)
        if g in layer_map.group_names
        for _, p in layer_map.parameters(g)
    }
    return MemoryBytes(
        trainable_parameters=sum(p.numel() for p in trained),
        parameter_bytes=_shard_bytes(everything, ranks),
        grad_bytes=trained_bytes,
        optimizer_state_bytes=state,
        master_weight_bytes=master,
        always_trained_parameters=sum(p.numel() for p in trained if id(p) in always),
        blocks_trained=blocks,
    )


def _unique(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list({id(p): p for p in parameters}.values())


def _tensor_shard_bytes(parameter: torch.Tensor, ranks: int) -> int:
    return shard_numel(parameter.shape, ranks) * parameter.element_size()


def _shard_bytes(parameters: Iterable[torch.Tensor], ranks: int) -> int:
    return sum(_tensor_shard_bytes(p, ranks) for p in _unique(parameters))
