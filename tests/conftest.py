"""Shared test set-up: hypothesis profiles and tiny random models."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" is deterministic (derandomize) so a CI failure reproduces; "dev" explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two cores: OpenMP threads fighting each other make tests slower, not faster.
torch.set_num_threads(1)


@pytest.fixture
def tiny_llama():
    """Factory for a tiny random LlamaForCausalLM (untied by default)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(num_blocks: int = 4, hidden: int = 32, vocab: int = 128, tie: bool = False, seed: int = 0):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=num_blocks,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=tie,
        )
        return LlamaForCausalLM(config)

    return make


@pytest.fixture
def tiny_gpt2():
    """Factory for a tiny random GPT2LMHeadModel (tied embeddings)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(num_blocks: int = 4, hidden: int = 32, vocab: int = 128, seed: int = 0):
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=num_blocks, n_head=4, n_positions=128
        )
        return GPT2LMHeadModel(config)

    return make
