"""``lisa estimate``: a run's memory for any model and method, before loading a single weight.

The model is built on the meta device from its config (a named family configuration, a tiny
model or a folder with config.json), so a 70B model takes about a second and no weight memory.
Per method (FT, LoRA, LISA, BAdam) and precision the estimate gives the exact bytes of weights,
grads, optimizer state and master copies (:mod:`lisa_apps.estimate.accounting`), an estimate
of activation memory (:mod:`lisa_apps.estimate.activations`), and, where LISA needs more than
LoRA, what freezing E or H or a smaller gamma would save (:mod:`lisa_apps.estimate.plan`).
docs/memory.md explains the numbers and compares them with published measurements.
"""

from __future__ import annotations

from lisa_apps.estimate.accounting import METHODS, MemoryBytes, Setup, account, shard_numel
from lisa_apps.estimate.activations import ActivationEstimate, activation_estimate, model_dims
from lisa_apps.estimate.configs import ModelSource, family_names, resolve_config
from lisa_apps.estimate.plan import Suggestion, Workload, estimate, suggestions

__all__ = [
    "METHODS",
    "ActivationEstimate",
    "MemoryBytes",
    "ModelSource",
    "Setup",
    "Suggestion",
    "Workload",
    "account",
    "activation_estimate",
    "estimate",
    "family_names",
    "model_dims",
    "resolve_config",
    "shard_numel",
    "suggestions",
]
