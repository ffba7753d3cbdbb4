"""LoRA on every linear layer of a model's blocks: the one wrapper for probes, runs and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lisa.defaults import DEFAULT_LORA_RANK, default_lora_alpha
from lisa.layers import LayerMap

__all__ = ["embedding_and_head_modules", "lora_target_modules", "wrap_lora"]


def lora_target_modules(model: nn.Module, layer_map: LayerMap | None = None) -> list[str]:
    """Full names of every linear layer inside the model's blocks (peft ``target_modules``).

    Args:
        model: the plain (not yet peft-wrapped) model.
        layer_map: its LayerMap; built when None.

    Returns:
        Module names such as ``model.layers.0.self_attn.q_proj``, in model order.
    """
    from transformers.pytorch_utils import Conv1D

    layer_map = layer_map or LayerMap.from_model(model)
    prefix = f"{layer_map.blocks_path}."
    names = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, nn.Linear | Conv1D)
    ]
    if not names:
        raise ValueError(
            f"no linear layers found under {layer_map.blocks_path!r}; the LoRA probe needs them"
        )
    return names


def embedding_and_head_modules(model: nn.Module, layer_map: LayerMap | None = None) -> list[str]:
    """Full names of the modules that hold E and H (peft ``modules_to_save``).

    The embedding modules own the ``embed`` group's parameters (GPT-2: token and position
    embeddings); the head is the model's output embedding, listed even when it is tied to E.

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> embedding_and_head_modules(build_tiny_model("tiny-llama", num_blocks=1))
        ['model.embed_tokens', 'lm_head']
    """
    layer_map = layer_map or LayerMap.from_model(model)
    names = [name.rsplit(".", 1)[0] for name, _ in layer_map.parameters("embed")]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head else None
    if head_name is None:
        head_name = next(
            (name.rsplit(".", 1)[0] for name, _ in layer_map.parameters("head")), None
        )
    if head_name is not None and head_name not in names:
        names.append(head_name)
    if not names:
        raise ValueError(f"{type(model).__name__} has no embedding or head module to train")
    return list(dict.fromkeys(names))


def wrap_lora(
    model: nn.Module,
    *,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    layer_map: LayerMap | None = None,
    train_embeddings_and_head: bool = False,
):
    """Wrap a causal LM with LoRA adapters on every linear layer of its blocks (peft).

    The update of each adapted weight is (alpha / rank) * B @ A; B starts at zero, so the
    wrapped model first computes exactly what the base model does. Used by the LoRA probe, the
    LoRA runs of ``lisa train`` and the benchmarks, so all of them adapt the same layers.

    With ``train_embeddings_and_head`` the embedding (E) and output head (H) also train in
    full, through peft's ``modules_to_save`` (a trainable copy of each module runs in place of
    the frozen original; on a tied model ``ensure_weight_tying`` keeps E and H one matrix).

    Args:
        model: the causal LM (wrapped in place, as peft does).
        rank: adapter rank r.
        alpha: LoRA alpha; None takes ``lisa.defaults.default_lora_alpha(rank)`` (2 r).
        dropout: dropout on the adapters' input.
        seed: seeds A's initialisation on a forked RNG (the caller's RNG is untouched).
        layer_map: the model's LayerMap, if already built.
        train_embeddings_and_head: also train E and H in full (peft ``modules_to_save``).

    Returns:
        The peft model; only adapter weights (and with ``train_embeddings_and_head`` the copies
        of E and H) require grad.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    layer_map = layer_map or LayerMap.from_model(model)
    targets = lora_target_modules(model, layer_map)
    extra = {}
    if train_embeddings_and_head:
        extra = {
            "modules_to_save": embedding_and_head_modules(model, layer_map),
            "ensure_weight_tying": layer_map.tied,
        }
    config = LoraConfig(
        r=rank,
        lora_alpha=default_lora_alpha(rank) if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed; peft must be told.
        fan_in_fan_out=any(isinstance(model.get_submodule(n), Conv1D) for n in targets),
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )
    # peft draws A from torch's global generator; seed it without leaking into the caller's.
    with torch.random.fork_rng(devices=[]), _stand_in_weights(model, targets):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


@contextlib.contextmanager
def _stand_in_weights(model: nn.Module, targets: list[str]) -> Iterator[None]:
    """While peft wraps, give each target whose weight is on the meta device a storage-free
    stand-in on the default device; put the meta weight back afterwards.

    peft builds the adapters on the default device, draws them, then moves them to the device
    of the layer's weight: to meta, losing the values, for a model built empty to be loaded
    shard by shard (lisa_apps.sharded_load.empty_model). A stand-in (one element expanded to
    the weight's shape and dtype) keeps them where they were drawn: the same values, from the
    same draws, as on a loaded model, in the weight's dtype.
    """
    swapped = []
    for name in targets:
        layer = model.get_submodule(name)
        weight = layer.weight
        if weight.is_meta:
            stand_in = torch.empty((), dtype=weight.dtype).expand(weight.shape)
            layer.weight = nn.Parameter(stand_in, requires_grad=False)
            swapped.append((layer, weight))
    try:
        yield
    finally:
        for layer, weight in swapped:  # peft keeps the layer itself as its base_layer
            weight.requires_grad_(layer.weight.requires_grad)
            layer.weight = weight
