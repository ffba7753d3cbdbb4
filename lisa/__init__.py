"""LISA: Layerwise Importance Sampled AdamW (Pan et al. 2024, arXiv 2403.17919).

The method: a map of a model's layer groups, samplers that choose which middle blocks train,
and the engine that switches them (for plain PyTorch loops and transformers.Trainer).
"""

from __future__ import annotations

from typing import Any

from lisa.data import (
    DataCollator,
    extract_answer,
    load_examples,
    load_jsonl,
    make_math_problems,
    tokenize_examples,
)
from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap, block_group, block_index
from lisa.memory import (
    grad_bytes,
    memory_report,
    minimum_optimizer_state_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_bytes,
)
from lisa.models import DEFAULT_MODEL, available_models, load_model
from lisa.samplers import (
    BernoulliSampler,
    CyclicSampler,
    FixedSampler,
    Sampler,
    StatefulSampler,
    UniformSampler,
    WeightedSampler,
    available_samplers,
    inclusion_probabilities_from_scores,
    make_sampler,
    register_sampler,
    systematic_sample,
)
from lisa.switching import STATE_POLICIES, Lisa, LisaConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EMBED",
    "EXTRAS",
    "HEAD",
    "STATE_POLICIES",
    "BernoulliSampler",
    "CyclicSampler",
    "DataCollator",
    "FixedSampler",
    "LayerMap",
    "Lisa",
    "LisaCallback",
    "LisaConfig",
    "Sampler",
    "StatefulSampler",
    "UniformSampler",
    "WeightedSampler",
    "__version__",
    "available_models",
    "available_samplers",
    "block_group",
    "block_index",
    "extract_answer",
    "grad_bytes",
    "inclusion_probabilities_from_scores",
    "load_examples",
    "load_jsonl",
    "load_model",
    "make_math_problems",
    "make_sampler",
    "memory_report",
    "minimum_optimizer_state_bytes",
    "optimizer_state_bytes",
    "parameter_bytes",
    "register_sampler",
    "systematic_sample",
    "tensor_bytes",
    "tokenize_examples",
]


def __getattr__(name: str) -> Any:
    # The callback pulls in transformers' Trainer machinery; load it only when asked for.
    if name == "LisaCallback":
        from lisa.callback import LisaCallback

        return LisaCallback
    raise AttributeError(f"module 'lisa' has no attribute {name!r}")
