"""LISA: Layerwise Importance Sampled AdamW (Pan et al. 2024, arXiv 2403.17919).

The method only: a map of a model's layer groups, samplers that choose which middle blocks
train, the engine that switches them (for plain PyTorch loops and transformers.Trainer), exact
memory accounting and the helpers for several processes. It needs torch and numpy; pandas (for
``memory_report``) and transformers' Trainer machinery (for ``LisaCallback``) load only when
those names are used.
"""

from __future__ import annotations

from typing import Any

from lisa.config import STATE_POLICIES, LisaConfig, sampler_spec
from lisa.defaults import (
    DEFAULT_GAMMA,
    DEFAULT_INTERVAL,
    DEFAULT_LEARNING_RATES,
    DEFAULT_LORA_RANK,
    DEFAULT_LR_SCHEDULER,
    DEFAULT_WARMUP_RATIO,
    default_lora_alpha,
)
from lisa.distributed import check_model_wrapper, check_same_draw, reshard_model, shard_model
from lisa.engine import Lisa
from lisa.group_rates import param_groups
from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap, block_group, block_index
from lisa.memory import (
    grad_bytes,
    memory_report,
    minimum_optimizer_state_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_bytes,
)
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
from lisa.signature import check_layer_signature, layer_signature, signature_difference

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_INTERVAL",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_LORA_RANK",
    "DEFAULT_LR_SCHEDULER",
    "DEFAULT_WARMUP_RATIO",
    "EMBED",
    "EXTRAS",
    "HEAD",
    "STATE_POLICIES",
    "BernoulliSampler",
    "CyclicSampler",
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
    "available_samplers",
    "block_group",
    "block_index",
    "check_layer_signature",
    "check_model_wrapper",
    "check_same_draw",
    "default_lora_alpha",
    "grad_bytes",
    "inclusion_probabilities_from_scores",
    "layer_signature",
    "make_sampler",
    "memory_report",
    "minimum_optimizer_state_bytes",
    "optimizer_state_bytes",
    "param_groups",
    "parameter_bytes",
    "register_sampler",
    "reshard_model",
    "sampler_spec",
    "shard_model",
    "signature_difference",
    "systematic_sample",
    "tensor_bytes",
]


def __getattr__(name: str) -> Any:
    # The callback pulls in transformers' Trainer machinery; load it only when asked for.
    if name == "LisaCallback":
        from lisa.callback import LisaCallback

        return LisaCallback
    raise AttributeError(f"module 'lisa' has no attribute {name!r}")
