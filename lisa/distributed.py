"""Helpers for running LISA in several processes (torch.distributed): FSDP2, DDP, the draw check.

Every rank must train the same blocks in every period: the engine draws from a generator seeded
identically on every rank, and ``check_same_draw`` verifies at each switch, with one small
collective, that the draws agree; a mismatch raises instead of training different blocks on
different ranks.

Two engines are supported, both from torch itself (docs/scaling.md compares them):

- FSDP2 (``torch.distributed.fsdp.fully_shard``): ``shard_model`` puts every block, the
  embedding and the head in units of their own, so each rank holds 1/W of every parameter, of
  its grad and of its optimizer state, and LISA's frozen blocks hold no grad at all.
- DDP (``DistributedDataParallel``): every rank holds the whole model. DDP all-reduces only the
  parameters that required grad when it was built, so wrap the model before LISA freezes
  anything (every parameter LISA may train requiring grad) and with
  ``find_unused_parameters=True`` (frozen blocks produce no grad). ``check_model_wrapper``
  refuses a DDP model built otherwise, FSDP1 (flat parameters) and DeepSpeed.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_model_wrapper",
    "check_same_draw",
    "is_distributed",
    "reshard_model",
    "shard_model",
    "unwrap_data_parallel",
]


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


# FSDP2 ---------------------------------------------------------------------------------------


def _group_modules(model: nn.Module, members: set[int], taken: set[int]) -> list[nn.Module]:
    """The largest submodules whose parameters all belong to ``members`` (ids), in order.

    The root itself is never returned (it is the last unit), nor anything inside a module in
    ``taken`` (ids of modules already given to a unit).
    """
    chosen: list[nn.Module] = []
    inside: set[int] = set(taken)
    for _, module in model.named_modules():
        if module is model or id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue  # a container has no forward of its own; fully_shard refuses it
        parameters = {id(p) for p in module.parameters()}
        if parameters and parameters <= members:
            chosen.append(module)
            inside.update(id(m) for m in module.modules())
    return chosen


def shard_units(model: nn.Module, layer_map=None) -> list[tuple[str, list[nn.Module]]]:
    """The FSDP2 units ``shard_model`` makes, as (group, modules) pairs, root excluded.

    One unit per block, then one for the embedding (E) and one for the head (H). A head tied
    to the embedding shares its weight, so it joins E's unit (one parameter, one unit). The
    extras (final norm, ...) stay in the root unit.

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> units = shard_units(build_tiny_model("tiny-llama", num_blocks=2))
        >>> [(group, [type(m).__name__ for m in modules]) for group, modules in units]
        [('block.0', ['LlamaDecoderLayer']), ('block.1', ['LlamaDecoderLayer']), ('embed', ['Embedding']), ('head', ['Linear'])]
    """
    from lisa.layers import EMBED, HEAD, LayerMap, block_index

    layer_map = LayerMap.from_model(model) if layer_map is None else layer_map
    if layer_map.model is not model:
        raise ValueError("layer_map was built for another model; build it from this model")
    taken: set[int] = set()
    units: list[tuple[str, list[nn.Module]]] = []
    order = [g for g in layer_map.group_names if block_index(g) is not None]
    order += [g for g in (EMBED, HEAD) if g in layer_map.group_names]
    for group in order:
        members = {id(p) for _, p in layer_map.parameters(group)}
        if group == EMBED and layer_map.tied:
            # The tied head's only parameter is the shared weight: it belongs with E.
            members |= {id(p) for _, p in layer_map.parameters(HEAD)}
        modules = _group_modules(model, members, taken)
        if modules:
            units.append((group, modules))
            taken.update(id(m) for module in modules for m in module.modules())
    return units


def shard_model(model: nn.Module, layer_map=None, **fully_shard_options: Any) -> nn.Module:
    """Shard ``model`` with FSDP2: every block, E and H in units of their own, then the root.

    Each unit's parameters become DTensors sharded on dim 0 over the ranks, so a rank holds
    ~1/W of every weight, grad and optimizer state; a unit is gathered only while it computes.
    Units follow LISA's groups, so a frozen block's unit has no grad and no optimizer state on
    any rank. Build the optimizer after sharding (the parameters are new objects), over all
    parameters, then ``Lisa(model, optimizer, config)``.

    Args:
        model: an unsharded model (e.g. a transformers causal LM). Leave it on the CPU:
            fully_shard moves each unit's shard to the mesh's device as it goes, so a GPU never
            holds more than one unit in full (moving the model first needs the whole of it on
            every GPU).
        layer_map: its LayerMap; built with ``LayerMap.from_model`` when None.
        **fully_shard_options: passed to every ``fully_shard`` call (``mesh``: the default is
            CUDA whenever CUDA is present; ``reshard_after_forward``, ``mp_policy``,
            ``offload_policy``).

    Returns:
        The same model, now an FSDP2 module (``fully_shard`` changes its class in place).

    Raises:
        RuntimeError: no initialised process group.
        ValueError: the model is already sharded or wrapped.

    Example:
        >>> import torch
        >>> from lisa import Lisa, LisaConfig
        >>> from lisa_apps.tiny import build_tiny_model
        >>> # under torchrun, after torch.distributed.init_process_group():
        >>> # model = shard_model(build_tiny_model("tiny-llama"))
        >>> # optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        >>> # lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=20))
        >>> shard_model(build_tiny_model("tiny-llama"))  # no process group here
        Traceback (most recent call last):
        ...
        RuntimeError: shard_model needs an initialised process group (torch.distributed.init_process_group(), e.g. under torchrun)
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            "shard_model needs an initialised process group "
            "(torch.distributed.init_process_group(), e.g. under torchrun)"
        )
    if any(isinstance(m, FSDPModule) for m in model.modules()):
        raise ValueError("the model is already sharded with fully_shard; shard it once")
    check_model_wrapper(model)
    if unwrap_data_parallel(model) is not model:
        raise ValueError("shard the plain model, not a DistributedDataParallel wrapper")
    for _, modules in shard_units(model, layer_map):
        fully_shard(modules if len(modules) > 1 else modules[0], **fully_shard_options)
    fully_shard(model, **fully_shard_options)
    return model


def reshard_model(model: nn.Module) -> nn.Module:
    """Put every FSDP2 unit of ``model`` back in its sharded state; a plain model is unchanged.

    FSDP2 keeps the root unit gathered after a forward pass (its backward needs it at once)
    and registers the gathered tensors as the module's parameters until then. After a forward
    without backward (an evaluation), an optimizer or a Lisa engine built from
    ``model.parameters()`` would hold those temporary tensors instead of the shards; reshard
    first (Lisa refuses such parameters).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> reshard_model(layer) is layer
        True
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def _is_fsdp2(model: nn.Module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# wrappers LISA accepts and refuses ----------------------------------------------------------


def unwrap_data_parallel(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> unwrap_data_parallel(layer) is layer
        True
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _from_deepspeed(thing: Any) -> bool:
    """A DeepSpeed object, found by its class's module (deepspeed itself is never imported)."""
    return any("deepspeed" in (cls.__module__ or "").split(".") for cls in type(thing).__mro__)


def _wrapped_optimizers(optimizer: Any, depth: int = 4) -> Iterable[Any]:
    """``optimizer`` and the optimizers it wraps (accelerate and DeepSpeed nest them)."""
    seen = 0
    while optimizer is not None and seen < depth:
        yield optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1


def check_model_wrapper(
    model: nn.Module,
    optimizer: Any = None,
    parameters: Sequence[torch.Tensor] | None = None,
) -> None:
    """Refuse the wrappers under which LISA cannot train correctly, naming the fix.

    Accepted: a plain model, an FSDP2 model (``fully_shard``, e.g. from ``shard_model``) whose
    ``parameters`` are its shards, and a DDP model built with ``find_unused_parameters=True`` while every parameter in
    ``parameters`` (those LISA may train) required grad. Refused: DeepSpeed (engine, ZeRO
    parameters or optimizer), FSDP1 (``FullyShardedDataParallel`` flattens parameters, so
    blocks cannot be frozen one by one) and a DDP model built otherwise (a block frozen when
    DDP was built is never all-reduced when it trains later: the ranks would diverge
    silently; without find_unused_parameters DDP fails on the first frozen block).

    Args:
        model: what the user trains (maybe a wrapper).
        optimizer: its optimizer (maybe a wrapper), or None.
        parameters: the parameters LISA may train (to check DDP's registration), or None.

    Raises:
        ValueError: the wrapper is refused; the message names the supported path.

    Example:
        >>> check_model_wrapper(nn.Linear(2, 2))  # a plain model passes
    """
    from torch.nn.parallel import DistributedDataParallel

    wrapped = model
    deepspeed = _from_deepspeed(model) or any(
        hasattr(p, "ds_id") for p in unwrap_data_parallel(model).parameters()
    )
    deepspeed = deepspeed or any(_from_deepspeed(o) for o in _wrapped_optimizers(optimizer))
    if deepspeed:
        raise ValueError(
            "LISA does not support DeepSpeed: ZeRO partitions and flattens parameters, so LISA "
            "cannot freeze blocks one by one or free their optimizer state. Shard with FSDP2 "
            "instead (torch.distributed.fsdp.fully_shard, e.g. lisa.distributed.shard_model, "
            "or accelerate's FSDP with fsdp_version 2); see docs/scaling.md"
        )
    for module in unwrap_data_parallel(model).modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ValueError(
                "LISA does not support FSDP1 (FullyShardedDataParallel flattens each unit's "
                "parameters into one, so blocks cannot be frozen one by one); use FSDP2: "
                "lisa.distributed.shard_model(model) or torch.distributed.fsdp.fully_shard, "
                "or accelerate's FSDP with fsdp_version 2; see docs/scaling.md"
            )
    if parameters is not None and _is_fsdp2(model):
        gathered = [p for p in parameters if not hasattr(p, "placements")]
        if gathered:
            raise ValueError(
                f"{len(gathered)} parameters of the FSDP2 model are gathered tensors, not its "
                "shards (a forward without backward leaves FSDP2's root unit gathered); call "
                "lisa.distributed.reshard_model(model) and build the optimizer again, or build "
                "it right after shard_model"
            )
    if not isinstance(wrapped, DistributedDataParallel):
        return
    if not wrapped.find_unused_parameters:
        raise ValueError(
            "DistributedDataParallel was built with find_unused_parameters=False, but LISA's "
            "frozen blocks produce no gradient; build it with find_unused_parameters=True "
            "(or shard with FSDP2: lisa.distributed.shard_model); see docs/scaling.md"
        )
    if parameters is None:
        return
    registered = _ddp_registered_bytes(wrapped)
    needed = sum(p.numel() * p.element_size() for p in {id(p): p for p in parameters}.values())
    if registered is not None and registered < needed:
        raise ValueError(
            f"DistributedDataParallel registered {registered:,} bytes of parameters but LISA "
            f"may train {needed:,}: some blocks were frozen when DDP was built, and DDP never "
            "all-reduces their grads, so the ranks would diverge. Wrap the model with DDP while "
            "every parameter requires grad (before Lisa's first begin_step)"
        )


def _ddp_registered_bytes(ddp: nn.Module) -> int | None:
    """Bytes of the parameters DDP's reducer holds buckets for (those that required grad)."""
    sizes = ddp._get_ddp_logging_data().get("bucket_sizes")
    if sizes is None:
        return None
    return sum(int(size) for size in str(sizes).split(",") if size.strip())
