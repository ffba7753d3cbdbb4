"""Sampling policies derived from block scores: the paper's LoRA/FT norm ratio, or any source.

The paper's importance weight of block l is the ratio of its mean norms in the two runs,

    s_l = w_LoRA^l / w_FT^l,

turned into exact fixed-size inclusion probabilities by
``lisa.samplers.inclusion_probabilities_from_scores`` (s ** temperature, floor, scale to sum
gamma, cap at 1 redistributing the excess). Only the blocks are sampled; embeddings, head and
extras follow the policy's ``train_*`` flags (the paper keeps E and H always on: p = 1).

The result is a :class:`SamplingPolicy`, whose file format (JSON with layer names, layer
signature and provenance) lives in :mod:`diagnostics.policy_format`; it is re-exported here,
so ``from diagnostics.policy import SamplingPolicy`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from diagnostics.policy_format import POLICY_FORMAT, SamplingPolicy
from lisa.layers import LayerMap, block_group
from lisa.samplers import inclusion_probabilities_from_scores
from lisa.signature import layer_signature

__all__ = ["POLICY_FORMAT", "SamplingPolicy", "block_means", "derive_policy", "policy_from_scores"]


def block_means(
    source: Sequence[float] | np.ndarray | pd.DataFrame,
    *,
    method: str | None = None,
    kind: str = "weight",
    reduce: str = "l2",
) -> np.ndarray:
    """Per-block mean norm w^l from an array or a norms table.

    Args:
        source: per-block means (returned as float64), a tidy norms table, or a
            ``mean_norms`` table.
        method: keep only rows of this method (needed when the table holds several).
        kind, reduce: the norm kind and reduction to use.

    Returns:
        float64 array over blocks 0..N-1.
    """
    if not isinstance(source, pd.DataFrame):
        values = np.asarray(source, dtype=np.float64).reshape(-1)
        if values.size == 0:
            raise ValueError("per-block norms are empty")
        return values
    frame = source
    if method is not None and "method" in frame.columns:
        frame = frame[frame["method"] == method]
    elif "method" in frame.columns and frame["method"].nunique() > 1:
        raise ValueError(
            f"the table holds methods {sorted(frame['method'].unique())}; pass method= to pick one"
        )
    frame = frame[(frame["kind"] == kind) & (frame["reduce"] == reduce)]
    if "run" in frame.columns and frame["run"].nunique() > 1:
        raise ValueError(f"the table holds runs {sorted(frame['run'].unique())}; select one first")
    frame = frame[frame["block_index"].notna()]
    if frame.empty:
        raise ValueError(
            f"no block rows with method={method!r}, kind={kind!r}, reduce={reduce!r} in the table"
        )
    column = "mean_norm" if "mean_norm" in frame.columns else "norm"
    means = frame.groupby(frame["block_index"].astype(int))[column].mean().sort_index()
    expected = list(range(len(means)))
    if means.index.tolist() != expected:
        raise ValueError(f"block indices {means.index.tolist()} are not 0..{len(means) - 1}")
    return means.to_numpy(dtype=np.float64)


def derive_policy(
    lora: Sequence[float] | np.ndarray | pd.DataFrame,
    ft: Sequence[float] | np.ndarray | pd.DataFrame,
    gamma: int,
    *,
    temperature: float = 1.0,
    floor: float = 0.0,
    kind: str = "weight",
    reduce: str = "l2",
    layer_map: LayerMap | nn.Module | None = None,
    signature: Mapping[str, Any] | None = None,
    source: str | None = None,
    model: str | None = None,
) -> SamplingPolicy:
    """Inclusion probabilities from the paper's importance weights s_l = w_LoRA^l / w_FT^l.

    pi = inclusion_probabilities_from_scores(s, gamma, temperature=..., floor=...): pi_l in
    [0, 1], sum_l pi_l = gamma, invariant to scaling either profile by a constant.

    Args:
        lora, ft: per-block mean norms (arrays of equal length) or norms tables (a table with
            both methods is filtered to "lora" / "ft").
        gamma: blocks drawn per period.
        temperature: exponent on the scores (0: uniform over positive scores).
        floor: least inclusion probability of every block.
        kind, reduce: which recorded norm to use when given tables.
        layer_map: the model (or its LayerMap) the policy is for; its signature is stored.
        signature: a ``LayerMap.signature()`` or ``layer_signature`` dict to store instead
            (e.g. from a norms sidecar); taken from a table's sidecar when neither is given.
        source: free text recorded in the provenance (e.g. the norms file).
        model: the model's name or folder, recorded in the provenance (``lisa train --policy``
            trains that model when no ``--model`` is given).

    Returns:
        A SamplingPolicy over the blocks.

    Example:
        >>> derive_policy([4.0, 1.0, 1.0], [1.0, 1.0, 1.0], gamma=2).inclusion_probabilities.tolist()
        [1.0, 0.5, 0.5]
    """
    lora_means = block_means(
        lora, method="lora" if _has_method(lora, "lora") else None, kind=kind, reduce=reduce
    )
    ft_means = block_means(
        ft, method="ft" if _has_method(ft, "ft") else None, kind=kind, reduce=reduce
    )
    if lora_means.shape != ft_means.shape:
        raise ValueError(
            f"LoRA profile has {lora_means.size} blocks but FT profile has {ft_means.size}"
        )
    if np.any(ft_means <= 0) or not np.all(np.isfinite(ft_means)):
        raise ValueError("FT block norms must be positive and finite to divide by them")
    if np.any(lora_means < 0) or not np.all(np.isfinite(lora_means)):
        raise ValueError("LoRA block norms must be non-negative and finite")
    scores = lora_means / ft_means
    pi = inclusion_probabilities_from_scores(scores, gamma, temperature=temperature, floor=floor)
    if layer_map is not None:
        stored = layer_signature(layer_map)
    elif signature is not None:
        stored = layer_signature(signature)
    else:
        stored = _signature_from_tables(ft, lora)
    provenance = {
        "derivation": "s_l = w_lora^l / w_ft^l -> inclusion_probabilities_from_scores",
        "score_source": "norm-ratio",
        "source_settings": {"kind": kind, "reduce": reduce},
        "kind": kind,
        "reduce": reduce,
        "temperature": float(temperature),
        "floor": float(floor),
        "scores": scores.tolist(),
        "lora_block_means": lora_means.tolist(),
        "ft_block_means": ft_means.tolist(),
        "source": source,
        "model": model,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return SamplingPolicy(
        inclusion_probabilities=pi,
        gamma=int(gamma),
        layer_names=tuple(block_group(i) for i in range(pi.size)),
        signature=stored,
        provenance=provenance,
    )


def _has_method(source: Any, method: str) -> bool:
    return (
        isinstance(source, pd.DataFrame)
        and "method" in source.columns
        and bool((source["method"] == method).any())
    )


def _signature_from_tables(*tables: Any) -> dict[str, Any] | None:
    for table in tables:
        if isinstance(table, pd.DataFrame):
            full = table.attrs.get("sidecar", {}).get("layer_signature")
            if isinstance(full, dict):
                try:
                    return layer_signature(full)
                except ValueError:
                    continue
    return None


def policy_from_scores(
    scores: Sequence[float] | np.ndarray,
    gamma: int,
    *,
    source: str,
    source_settings: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    floor: float = 0.0,
    layer_map: LayerMap | nn.Module | None = None,
    signature: Mapping[str, Any] | None = None,
    model: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> SamplingPolicy:
    """A policy from any block scores, recording the score source and its settings.

    pi = inclusion_probabilities_from_scores(s, gamma, temperature=..., floor=...), so scaling
    every score by a constant leaves the policy unchanged.

    Args:
        scores: one finite, non-negative score per block (see :mod:`diagnostics.sources`).
        gamma: blocks drawn per period.
        source: the score source's registered name (e.g. ``"grad-norm"``).
        source_settings: its settings (``ScoreSource.settings()``).
        temperature, floor: see :func:`lisa.samplers.inclusion_probabilities_from_scores`.
        layer_map: the model (or its LayerMap) the policy is for; its signature is stored.
        signature: a signature to store instead (``LayerMap.signature()`` or
            ``layer_signature`` output).
        model: the model's name or folder, recorded in the provenance.
        details: more provenance (e.g. how many batches the scores came from).

    Returns:
        A SamplingPolicy whose provenance holds ``score_source``, ``source_settings`` and
        ``scores``.

    Example:
        >>> policy = policy_from_scores([3.0, 1.0, 1.0, 1.0], 2, source="file")
        >>> policy.inclusion_probabilities.round(3).tolist(), policy.provenance["score_source"]
        ([1.0, 0.333, 0.333, 0.333], 'file')
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    pi = inclusion_probabilities_from_scores(values, gamma, temperature=temperature, floor=floor)
    if layer_map is not None:
        stored = layer_signature(layer_map)
    elif signature is not None:
        stored = layer_signature(signature)
    else:
        stored = None
    provenance = {
        "derivation": f"{source} scores -> inclusion_probabilities_from_scores",
        "score_source": source,
        "source_settings": dict(source_settings or {}),
        "temperature": float(temperature),
        "floor": float(floor),
        "scores": values.tolist(),
        "model": model,
        **dict(details or {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return SamplingPolicy(
        inclusion_probabilities=pi,
        gamma=int(gamma),
        layer_names=tuple(block_group(i) for i in range(pi.size)),
        signature=stored,
        provenance=provenance,
    )
