"""LoRA on every linear layer of a model's blocks: the one wrapper for probes, runs and benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from lisa.defaults import DEFAULT_LORA_RANK, default_lora_alpha
from lisa.layers import LayerMap

__all__ = ["lora_target_modules", "wrap_lora"]


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


def wrap_lora(
    model: nn.Module,
    *,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    layer_map: LayerMap | None = None,
):
    """Wrap a causal LM with LoRA adapters on every linear layer of its blocks (peft).

    The update of each adapted weight is (alpha / rank) * B @ A; B starts at zero, so the
    wrapped model first computes exactly what the base model does. Used by the LoRA probe, the
    LoRA runs of ``lisa train`` and the benchmarks, so all of them adapt the same layers.

    Args:
        model: the causal LM (wrapped in place, as peft does).
        rank: adapter rank r.
        alpha: LoRA alpha; None takes ``lisa.defaults.default_lora_alpha(rank)`` (2 r).
        dropout: dropout on the adapters' input.
        seed: seeds A's initialisation on a forked RNG (the caller's RNG is untouched).
        layer_map: the model's LayerMap, if already built.

    Returns:
        The peft model; only adapter weights require grad.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_target_modules(model, layer_map)
    config = LoraConfig(
        r=rank,
        lora_alpha=default_lora_alpha(rank) if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed; peft must be told.
        fan_in_fan_out=any(isinstance(model.get_submodule(n), Conv1D) for n in targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft draws A from torch's global generator; seed it without leaking into the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)
