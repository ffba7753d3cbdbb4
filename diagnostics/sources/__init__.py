"""Block score sources: a model (plus batches or recorded norms) in, one score per block out.

Built-in sources (a registry like the samplers'; add your own with :func:`register_source`)::

    norm-ratio  w_LoRA / w_FT per block from a norms table (the paper's importance weight)
    grad-norm   mean gradient norm of each block over a few batches (no optimizer, no state)
    outlier     OWL's layerwise outlier ratio (OwLore's sampling weight), or its mirror image
    file        scores a user supplies in a CSV or JSON file

:func:`policy_from_source` turns a source's scores into a :class:`diagnostics.SamplingPolicy`
whose provenance records the source and its settings. See docs/sources.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
from torch import nn

from diagnostics.sources.base import INPUTS, Batch, ScoreSource, check_block_scores
from diagnostics.sources.file import FileSource, read_scores
from diagnostics.sources.grad_norm import GradNormSource, block_gradient_norms
from diagnostics.sources.norm_ratio import NormRatioSource
from diagnostics.sources.outlier import DIRECTIONS, OutlierSource
from diagnostics.sources.registry import (
    available_sources,
    make_source,
    register_source,
    source_factory,
)

__all__ = [
    "DIRECTIONS",
    "INPUTS",
    "Batch",
    "FileSource",
    "GradNormSource",
    "NormRatioSource",
    "OutlierSource",
    "ScoreSource",
    "available_sources",
    "block_gradient_norms",
    "check_block_scores",
    "make_source",
    "policy_from_source",
    "read_scores",
    "register_source",
    "source_factory",
]


def policy_from_source(
    source: ScoreSource,
    gamma: int,
    *,
    model: nn.Module | None = None,
    batches: Iterable[Batch] | None = None,
    norms: pd.DataFrame | None = None,
    temperature: float = 1.0,
    floor: float = 0.0,
    model_name: str | None = None,
    signature: dict[str, Any] | None = None,
):
    """Score the blocks with ``source`` and derive a SamplingPolicy that records it.

    Args:
        source: a ScoreSource (e.g. ``make_source("grad-norm")``).
        gamma: blocks drawn per period.
        model: the model to score (needed by grad-norm and outlier; checks the block count of
            the others, and its signature is stored in the policy).
        batches: tokenised batches (grad-norm, outlier); read once.
        norms: a norms table (norm-ratio).
        temperature, floor: see :func:`lisa.samplers.inclusion_probabilities_from_scores`.
        model_name: recorded in the provenance (``lisa train --policy`` trains that model).
        signature: stored when no model is given (e.g. a norms sidecar's layer signature).

    Returns:
        The policy; ``provenance`` holds ``score_source``, ``source_settings``, ``scores`` and
        ``num_batches`` (when batches were given).

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> import torch
        >>> model = build_tiny_model("tiny-llama", num_blocks=4, seed=0)
        >>> ids = torch.arange(16).reshape(2, 8)
        >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        >>> policy = policy_from_source(make_source("grad-norm"), 2, model=model, batches=[batch])
        >>> round(float(policy.inclusion_probabilities.sum()), 6), policy.provenance["score_source"]
        (2.0, 'grad-norm')
    """
    from diagnostics.policy import policy_from_scores

    if not isinstance(source, ScoreSource):
        raise ValueError(f"{source!r} is not a ScoreSource (see diagnostics.sources)")
    given = {"model": model, "batches": batches, "norms": norms}
    missing = [name for name in source.requires if given.get(name) is None]
    if missing:
        raise ValueError(f"the {source.name} source needs {', '.join(missing)}; pass them")
    details: dict[str, Any] = {}
    if batches is not None:
        batches = list(batches)
        details["num_batches"] = len(batches)
    scores = source.block_scores(model, batches=batches, norms=norms)
    return policy_from_scores(
        scores,
        gamma,
        source=source.name,
        source_settings=source.settings(),
        temperature=temperature,
        floor=floor,
        layer_map=model,
        signature=None if model is not None else signature,
        model=model_name,
        details=details,
    )
