"""Peak CPU memory of one rank while a run loads its model: full copy vs shard by shard.

Today's way (``load_model``, then ``prepare_model``'s cast, then ``shard_model``) has every rank
hold the whole model in float32, 4 bytes a parameter, while transformers reads the checkpoint
through a memory map whose touched pages count in the rank's resident set too: the whole file,
``c`` bytes a parameter (2 for a bfloat16 checkpoint, the usual)::

    full = P * (4 + c)

The cast to the run's precision converts one tensor at a time, so it adds at most one tensor.
Sharded loading (:mod:`lisa_apps.sharded_load`, FT and LISA under FSDP2 from a safetensors
folder) holds this rank's padded shards in the run's dtype (``w`` bytes) and, while filling
them, one slice of one tensor as stored::

    sharded = sum_t shard_numel(t, W) * w + max_t shard_numel(t, W) * c

bench/sharded_load.py measures both (docs/memory.md and docs/scaling.md hold the figures).
"""

from __future__ import annotations

from torch import nn

from lisa_apps.estimate.accounting import Setup, shard_numel, weight_dtype

__all__ = ["CHECKPOINT_BYTES", "load_bytes"]

# Bytes a parameter in the checkpoint: published checkpoints are bfloat16.
CHECKPOINT_BYTES = 2
FLOAT32_BYTES = 4


def load_bytes(model: nn.Module, setup: Setup) -> tuple[int, int | None]:
    """(full copy, sharded) peak CPU bytes of one rank while loading ``model`` for ``setup``.

    ``model`` is the meta model (under LoRA, peft-wrapped: its adapters, which it trains, are
    created after loading and not counted). Sharded is None where the run loads a full copy
    anyway: one process, or LoRA (peft wraps the whole model before sharding).

    Example:
        >>> from lisa_apps.models import meta_model
        >>> from lisa_apps.tiny import tiny_config
        >>> model = meta_model(tiny_config("tiny-llama"))
        >>> full, sharded = load_bytes(model, Setup("ft", "bf16", fsdp_ranks=2))
        >>> full == 6 * sum(p.numel() for p in model.parameters()), sharded < full / 2
        (True, True)
    """
    parameters = list({id(p): p for p in model.parameters()}.values())  # a tied one once
    if setup.method == "lora":
        parameters = [p for p in parameters if not p.requires_grad]  # the frozen base model
    full = sum(p.numel() for p in parameters) * (FLOAT32_BYTES + CHECKPOINT_BYTES)
    ranks = setup.fsdp_ranks
    if ranks < 2 or setup.method == "lora":
        return full, None
    width = weight_dtype(setup.precision).itemsize
    shards = [shard_numel(p.shape, ranks) for p in parameters]
    return full, sum(shards) * width + max(shards) * CHECKPOINT_BYTES
