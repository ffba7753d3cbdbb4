"""Shared test set-up: hypothesis profiles and tiny random models."""

from __future__ import annotations

import gc
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from lisa_apps.tiny import build_tiny_model

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

# The library calls gc.collect() before each peak-memory measurement (diagnostics.runtime), and a
# full collection walks every object of torch, transformers and peft: 0.3 s a call here, a third
# of the time of the training tests. Import them once, then freeze what exists (gc.freeze: kept
# out of every later collection; module-level objects live for the whole process anyway).
import peft  # noqa: E402, F401
import transformers.models.llama.modeling_llama  # noqa: E402, F401
from transformers import Trainer  # noqa: E402, F401

gc.collect()
gc.freeze()


def pytest_terminal_summary(terminalreporter):
    """Name the CPU kernel set the floats were computed with (scripts/test.sh runs several)."""
    capability = torch.backends.cpu.get_cpu_capability()
    terminalreporter.write_line(f"CPU kernel set: {capability} (ATEN_CPU_CAPABILITY)")


@pytest.fixture
def tiny_llama():
    """Factory for a tiny random LlamaForCausalLM (untied by default; lisa_apps.tiny's model)."""

    def make(num_blocks: int = 4, hidden: int = 32, vocab: int = 128, tie: bool = False, seed: int = 0):
        return build_tiny_model(
            "tiny-llama", num_blocks=num_blocks, hidden=hidden, vocab_size=vocab, tie=tie,
            seed=seed, max_positions=128,
        )  # fmt: skip

    return make


@pytest.fixture
def tiny_gpt2():
    """Factory for a tiny random GPT2LMHeadModel (tied embeddings; lisa_apps.tiny's model)."""

    def make(num_blocks: int = 4, hidden: int = 32, vocab: int = 128, seed: int = 0):
        return build_tiny_model(
            "tiny-gpt2", num_blocks=num_blocks, hidden=hidden, vocab_size=vocab, seed=seed,
            max_positions=128,
        )  # fmt: skip

    return make
