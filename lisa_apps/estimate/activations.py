"""An estimate of activation memory: what autograd keeps for the backward pass of one step.

The count follows what the transformers implementation of a Llama-style decoder block saves
(pre-norm RMSNorm computed in float32, attention through SDPA, gated MLP), per token, with
h = hidden size, q = heads * head_dim, k = key/value heads * head_dim, f = MLP width, V =
vocabulary, a = bytes of an activation (4 in float32, 2 under bfloat16):

    block, weights train     2 * (4 + n) * h + x * h + a * (2q + 2k) + 4 * a * f
    block, LoRA adapters     2 * 4 * h       + x * h + a * (2q + 2k) + 4 * a * f + 7 * a * r
    block, frozen            2 * 4 * h               + a * (2q + 2k) + 3 * a * f
    head                     (4 + n') * h + x' * h + V * (4 + l)

n = bytes of the normalised tensor (4, or 2 in pure bf16); x = bytes of the linear layers'
inputs (8 = two float32 inputs, 4 = two bf16 inputs, 10 = five bf16 copies that autocast makes
for q, k, v, gate and up); n' and x' the same for the final norm and the head when they train;
V * 4 the float32 log-probabilities of the loss and V * l the logits the model returns (l = 4 in
float32, else 2). Under "bf16-mixed" autocast also keeps a bfloat16 copy of every linear weight
it used (2 bytes per weight element, per step rather than per token). With activation
checkpointing a block keeps only its input (4 h, or 2 h in pure bf16) and one block's full set
is recomputed at a time during the backward pass.

In pure bf16 peft keeps LoRA adapters in float32 and casts their inputs to it, so an adapter
block keeps 4 * (5h + q + f) + 28 r in place of x * h + a * f + 7 * a * r.

Left out: attention scores of eager attention (SDPA keeps O(s) statistics; transformers runs
Gemma-2 with eager attention by default), the rotary tables, token ids, transient buffers of the
backward pass (e.g. the float32 gradient of the logits), the allocator's caching and
fragmentation, and CUDA/framework context; architectures whose blocks differ from the Llama
pattern (GPT-2's LayerNorm, gelu and dropout, Gemma-2's four norms and logit soft-capping) get
the same count and are less accurate. docs/memory.md compares it with what autograd saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lisa.validation import check_int

__all__ = [
    "BLOCK_MODES",
    "ActivationEstimate",
    "ModelDims",
    "activation_estimate",
    "measure_saved_bytes",
    "model_dims",
]

#: How a block takes part in the backward pass: its weights train ("full"), its LoRA adapters
#: train ("adapter"), only its input needs a gradient ("frozen"), or nothing below the loss
#: needs one ("none").
BLOCK_MODES = ("full", "adapter", "frozen", "none")


@dataclass(frozen=True)
class ModelDims:
    """The sizes the activation count needs, read from a transformers config.

    Attributes:
        hidden: h. q_dim: heads * head_dim. kv_dim: key/value heads * head_dim.
        intermediate: f, the MLP width. vocab: V. num_blocks: N.
        linear_weights_per_block: weight elements of one block's linear layers.
        gated: the MLP has a gate (Llama) rather than one up projection (GPT-2).
    """

    hidden: int
    q_dim: int
    kv_dim: int
    intermediate: int
    vocab: int
    num_blocks: int
    linear_weights_per_block: int
    gated: bool


@dataclass(frozen=True)
class ActivationEstimate:
    """Activation bytes of one step (an estimate, see the module docstring).

    Attributes:
        saved_bytes: what autograd holds when the forward pass ends, logits included.
        recompute_bytes: with checkpointing, one block's saved set rebuilt during backward.
    """

    saved_bytes: int
    recompute_bytes: int

    @property
    def total_bytes(self) -> int:
        """Peak of the two: what the backward pass holds at once."""
        return self.saved_bytes + self.recompute_bytes


def model_dims(config) -> ModelDims:
    """The sizes of ``config`` (Llama-style names, GPT-2's n_embd/n_inner/n_head as fallback).

    Example:
        >>> from lisa_apps.tiny import tiny_config
        >>> model_dims(tiny_config("tiny-llama")).intermediate
        128
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    heads = _first(text, "num_attention_heads", "n_head")
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    gated = getattr(text, "model_type", "") not in _PLAIN_MLP_TYPES
    intermediate = (
        getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    )
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q_dim + 2 * kv_dim) + q_dim * hidden
    mlp = (3 if gated else 2) * hidden * intermediate
    return ModelDims(
        hidden=hidden,
        q_dim=q_dim,
        kv_dim=kv_dim,
        intermediate=intermediate,
        vocab=_first(text, "vocab_size"),
        num_blocks=_first(text, "num_hidden_layers", "n_layer"),
        linear_weights_per_block=attention + mlp,
        gated=gated,
    )


_PLAIN_MLP_TYPES = ("gpt2", "gpt_neo", "gptj", "gpt_bigcode", "opt", "bloom", "falcon", "phi")


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} has none of {names}; the activation estimate needs them"
    )


def activation_estimate(
    dims: ModelDims,
    *,
    batch_size: int,
    seq_len: int,
    precision: str,
    block_modes: Sequence[str],
    head_trains: bool,
    final_norm_trains: bool,
    gradient_checkpointing: bool = False,
    lora_rank: int = 0,
) -> ActivationEstimate:
    """Activation bytes of one training step (see the module docstring for the formula).

    Args:
        dims: the model's sizes (:func:`model_dims`).
        batch_size, seq_len: sequences per device and tokens per sequence.
        precision: "float32", "bf16-mixed" or "bf16".
        block_modes: one of BLOCK_MODES per block.
        head_trains: the output head's weight trains (so its input is kept).
        final_norm_trains: the final norm's weight trains.
        gradient_checkpointing: keep only block inputs and recompute one block at a time.
        lora_rank: r of "adapter" blocks.

    Returns:
        The :class:`ActivationEstimate`.

    Example:
        >>> from lisa_apps.tiny import tiny_config
        >>> dims = model_dims(tiny_config("tiny-llama"))
        >>> full = activation_estimate(dims, batch_size=1, seq_len=8, precision="float32",
        ...                            block_modes=["full"] * 4, head_trains=True,
        ...                            final_norm_trains=True)
        >>> ckpt = activation_estimate(dims, batch_size=1, seq_len=8, precision="float32",
        ...                            block_modes=["full"] * 4, head_trains=True,
        ...                            final_norm_trains=True, gradient_checkpointing=True)
        >>> ckpt.saved_bytes < full.saved_bytes
        True
    """
    tokens = check_int("batch_size", batch_size) * check_int("seq_len", seq_len)
    unknown = sorted(set(block_modes) - set(BLOCK_MODES))
    if unknown:
        raise ValueError(f"block modes {unknown} are unknown; use {BLOCK_MODES}")
    a = 4 if precision == "float32" else 2
    normed = 2 if precision == "bf16" else 4
    mixed = precision == "bf16-mixed"
    h, f = dims.hidden, dims.intermediate
    attention = a * (2 * dims.q_dim + 2 * dims.kv_dim)
    # A gated MLP keeps gate, silu(gate) and up (3 f); a plain one keeps its up projection.
    mlp_core = (3 if dims.gated else 1) * a * f
    # Linear layers reading the normalised h: q, k, v, gate, up (Llama) or c_attn, c_fc (GPT-2);
    # o reads the attention output (q wide), down the MLP's f. Each carries a LoRA adapter.
    h_readers = 5 if dims.gated else 2
    linears = h_readers + 2
    # Inputs kept for the weights' grads: one copy per distinct input, or one bf16 copy per
    # layer that autocast casts.
    linear_inputs = (2 * h_readers if mixed else 2 * a) * h + a * f
    # peft keeps adapters in float32 on a bf16 model and casts each adapter's input to it.
    adapter_bytes = 4 if precision == "bf16" else a
    adapter_inputs = 4 * (h_readers * h + dims.q_dim + f) if precision == "bf16" else linear_inputs

    def block(mode: str) -> int:
        if mode == "none":
            return 0
        per_token = 2 * 4 * h + attention + mlp_core
        if mode == "full":
            per_token += 2 * normed * h + linear_inputs
        elif mode == "adapter":
            per_token += adapter_inputs + linears * adapter_bytes * lora_rank
        weight_copies = 2 * dims.linear_weights_per_block if mixed else 0
        return tokens * per_token + weight_copies

    head_per_token = 4 * h + dims.vocab * (4 + (4 if precision == "float32" else 2))
    if final_norm_trains:
        head_per_token += normed * h
    if head_trains:
        head_per_token += (2 if mixed else a) * h
    head = tokens * head_per_token + (2 * dims.vocab * h if mixed else 0)

    sizes = [block(mode) for mode in block_modes]
    if not gradient_checkpointing:
        return ActivationEstimate(saved_bytes=sum(sizes) + head, recompute_bytes=0)
    residual = 2 if precision == "bf16" else 4
    kept = sum(tokens * residual * h for mode in block_modes if mode != "none")
    return ActivationEstimate(saved_bytes=kept + head, recompute_bytes=max(sizes, default=0))


def measure_saved_bytes(model, input_ids, precision: str) -> int:
    """What autograd really keeps after one forward pass with labels, plus the returned logits.

    Counts the storages of every tensor saved for backward (each once, parameters excluded),
    through ``torch.autograd.graph.saved_tensors_hooks``: the quantity
    :func:`activation_estimate` estimates as ``saved_bytes``.

    Args:
        model: a causal LM in the precision's weight dtype, in train mode.
        input_ids: (batch, seq_len) token ids, also used as labels.
        precision: "float32", "bf16-mixed" (runs under bfloat16 autocast) or "bf16".

    Returns:
        Bytes.

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> model = build_tiny_model("tiny-llama").train()
        >>> measure_saved_bytes(model, torch.zeros(1, 8, dtype=torch.long), "float32") > 0
        True
    """
    from diagnostics.runtime import autocast

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with hooks, autocast(input_ids.device, precision):
        output = model(input_ids=input_ids, labels=input_ids)
    logits = output.logits.untyped_storage()
    saved[logits.data_ptr()] = logits.nbytes()
    return sum(saved.values())
