"""Diagnostics for LISA: per-layer norms, skew analysis, policy derivation and plots.

Plotting loads matplotlib and seaborn only when a plot is drawn, and the Trainer callback of
the recorder loads transformers' Trainer only when asked for.
"""

from __future__ import annotations

from typing import Any

from diagnostics.diagnose import DiagnoseSettings, Diagnosis, diagnose
from diagnostics.finetune import (
    FinetuneConfig,
    FinetuneResult,
    evaluate_loss,
    finetune,
    generate_answers,
)
from diagnostics.norms import NORM_KINDS, REDUCTIONS, layer_norms
from diagnostics.plots import (
    inclusion_frequencies,
    plot_inclusion_frequencies,
    plot_layer_norms,
    plot_loss_curve,
    plot_norm_heatmap,
    plot_policy,
)
from diagnostics.policy import SamplingPolicy, block_means, derive_policy, layer_signature
from diagnostics.probes import DEFAULT_LEARNING_RATES, lora_target_modules, run_probe
from diagnostics.recorder import NormRecorder, load_norms, load_sidecar
from diagnostics.skew import gini, mean_norms, side_by_side, skew_summary

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "NORM_KINDS",
    "REDUCTIONS",
    "DiagnoseSettings",
    "Diagnosis",
    "FinetuneConfig",
    "FinetuneResult",
    "NormRecorder",
    "NormRecorderCallback",
    "SamplingPolicy",
    "block_means",
    "derive_policy",
    "diagnose",
    "evaluate_loss",
    "finetune",
    "generate_answers",
    "gini",
    "inclusion_frequencies",
    "layer_norms",
    "layer_signature",
    "load_norms",
    "load_sidecar",
    "lora_target_modules",
    "mean_norms",
    "plot_inclusion_frequencies",
    "plot_layer_norms",
    "plot_loss_curve",
    "plot_norm_heatmap",
    "plot_policy",
    "run_probe",
    "side_by_side",
    "skew_summary",
]


def __getattr__(name: str) -> Any:
    # The callback adapter pulls in transformers' Trainer machinery; load it only when asked for.
    if name == "NormRecorderCallback":
        from diagnostics.recorder_callback import NormRecorderCallback

        return NormRecorderCallback
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
