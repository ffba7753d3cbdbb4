"""Diagnostics for LISA: per-layer norms, probes, skew analysis, policy derivation and plots.

The analysis layer: it builds on the method (``lisa``) and never on the applications
(``lisa_apps``). Names load on first use (PEP 562), so ``import diagnostics`` is cheap;
plotting loads matplotlib and seaborn only when a plot is drawn.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (no module is named like a function it exports: an
# imported submodule would shadow that name on the package)
_EXPORTS: dict[str, str] = {
    "atomic_write_bytes": "diagnostics.files",
    "atomic_write_text": "diagnostics.files",
    "library_versions": "diagnostics.files",
    "embedding_and_head_modules": "diagnostics.lora",
    "lora_target_modules": "diagnostics.lora",
    "wrap_lora": "diagnostics.lora",
    "NORM_KINDS": "diagnostics.norms",
    "REDUCTIONS": "diagnostics.norms",
    "layer_norms": "diagnostics.norms",
    "inclusion_frequencies": "diagnostics.plots",
    "plot_inclusion_frequencies": "diagnostics.plots",
    "plot_layer_norms": "diagnostics.plots",
    "plot_loss_curve": "diagnostics.plots",
    "plot_norm_heatmap": "diagnostics.plots",
    "plot_policy": "diagnostics.plots",
    "SamplingPolicy": "diagnostics.policy",
    "block_means": "diagnostics.policy",
    "derive_policy": "diagnostics.policy",
    "policy_from_scores": "diagnostics.policy",
    "PROBE_METHODS": "diagnostics.probes",
    "run_probe": "diagnostics.probes",
    "NormRecorder": "diagnostics.recorder",
    "load_norms": "diagnostics.recorder",
    "load_sidecar": "diagnostics.recorder",
    "NormRecorderCallback": "diagnostics.recorder_callback",
    "PRECISIONS": "diagnostics.runtime",
    "PeakMemory": "diagnostics.runtime",
    "resolve_device": "diagnostics.runtime",
    "FileSource": "diagnostics.sources",
    "GradNormSource": "diagnostics.sources",
    "NormRatioSource": "diagnostics.sources",
    "OutlierSource": "diagnostics.sources",
    "ScoreSource": "diagnostics.sources",
    "available_sources": "diagnostics.sources",
    "make_source": "diagnostics.sources",
    "policy_from_source": "diagnostics.sources",
    "register_source": "diagnostics.sources",
    "gini": "diagnostics.skew",
    "mean_norms": "diagnostics.skew",
    "side_by_side": "diagnostics.skew",
    "skew_summary": "diagnostics.skew",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
