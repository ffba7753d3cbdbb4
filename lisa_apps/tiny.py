"""Tiny random models with an offline tokenizer: the one definition for tests, docs, benchmarks.

``build_tiny_model("tiny-llama")`` (and ``"tiny-gpt2"``, ``"tiny-qwen2"``) makes a seeded random
causal LM of a few blocks in milliseconds; its keyword arguments size it, so the benchmarks'
12 x 512 Llama is ``build_tiny_model("tiny-llama", num_blocks=12, hidden=512, ...)``. The
tokenizer is byte-level with a ChatML chat template and needs no files.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TINY_MODELS", "build_tiny_model", "build_tiny_tokenizer", "tiny_config"]

TINY_MODELS = ("tiny-gpt2", "tiny-llama", "tiny-qwen2")
# Byte tokens and the three special tokens, rounded up to a multiple of 64 as real models do.
TINY_VOCAB_SIZE = 320

# ChatML, as SmolLM2 uses it, without the default system prompt (tiny models have no persona).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")


def build_tiny_tokenizer():
    """Build an offline byte-level tokenizer with pad/eos tokens and a ChatML chat template.

    Every byte is one token (ids 0..255), followed by the special tokens ``<|pad|>``,
    ``<|im_start|>`` and ``<|im_end|>`` (ids 256..258); ``<|im_end|>`` is the eos token. No
    merges, so it needs no training data and is identical on every machine.

    Returns:
        A ``PreTrainedTokenizerFast`` of 259 tokens.

    Example:
        >>> tokenizer = build_tiny_tokenizer()
        >>> tokenizer.decode(tokenizer("hi")["input_ids"])
        'hi'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Sort for a stable id assignment: the alphabet comes back as an unordered list.
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    name: str,
    *,
    num_blocks: int = 4,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int | None = None,
    vocab_size: int = TINY_VOCAB_SIZE,
    tie: bool | None = None,
    max_positions: int = 1024,
):
    """The transformers config of a tiny model: a Llama, GPT-2 or Qwen2 of the given size.

    Args:
        name: "tiny-llama" (untied by default), "tiny-gpt2" or "tiny-qwen2" (tied by default).
        num_blocks, hidden, heads: blocks, width and attention heads.
        intermediate: MLP width (Llama and Qwen2); default 2 * hidden.
        kv_heads: key/value heads (Llama and Qwen2); default heads // 2 (grouped-query).
        vocab_size: vocabulary rows; the default fits the tiny tokenizer's ids.
        tie: tie embedding and head; None keeps the family's default.
        max_positions: longest sequence.

    Example:
        >>> tiny_config("tiny-llama").num_hidden_layers
        4
    """
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    special = {"pad_token_id": 256, "bos_token_id": 257, "eos_token_id": 258}
    if vocab_size < 259:
        special = {}  # a smaller vocabulary than the tokenizer's: ids are the caller's business
    intermediate = 2 * hidden if intermediate is None else intermediate
    kv_heads = max(1, heads // 2) if kv_heads is None else kv_heads
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=num_blocks, n_head=heads,
            n_positions=max_positions, tie_word_embeddings=True if tie is None else tie,
            **special,
        )  # fmt: skip
    families = {"tiny-llama": (LlamaConfig, False), "tiny-qwen2": (Qwen2Config, True)}
    if name not in families:
        raise ValueError(f"model {name!r} is not a tiny model; use one of {TINY_MODELS}")
    config_class, tied_by_default = families[name]
    return config_class(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=num_blocks, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied_by_default if tie is None else tie, **special,
    )  # fmt: skip


def build_tiny_model(
    name: str = "tiny-llama",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    **shape,
) -> nn.Module:
    """A tiny random causal LM (see :func:`tiny_config` for ``shape``), seeded on a forked RNG.

    The caller's global torch RNG is left as it was. ``device="meta"`` builds it without memory.

    Example:
        >>> model = build_tiny_model("tiny-gpt2", num_blocks=2)
        >>> type(model).__name__, model.config.n_layer
        ('GPT2LMHeadModel', 2)
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(name, **shape)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = name  # so run records say "tiny-llama", not a class name
    model = model.to(dtype)
    return model if device is None else model.to(device)
