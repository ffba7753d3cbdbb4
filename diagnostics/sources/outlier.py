"""outlier: the layerwise outlier ratio of OWL, the block score OwLore samples layers by.

OWL (Yin et al. 2023, arXiv 2310.05175) scores every weight by its magnitude times the norm of
the input feature it multiplies, A_ij = |W_ij| * ||X_j||_2 (Wanda's metric, X the inputs of the
linear layer over a few forward passes), and calls a layer's *outlier ratio* the fraction of
its entries above M times the mean,

    s_l = #{(W, i, j) : A_ij > M * mean(A)} / #{entries},

where, as in OWL's code (``check_outlier_mean`` over the concatenation of every linear weight of
a decoder layer), the mean and the fraction are taken over the whole block: all its linear
layers together, not one matrix at a time. OwLore (Li et al. 2024, arXiv 2405.18380) samples
blocks with probability proportional to s_l ("favour"); ``reverse`` mirrors the profile within
its range, s'_l = max(s) + min(s) - s_l, so the block with the fewest outliers gets the score of
the one with the most and the spread between blocks is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from diagnostics.sources.base import Batch, check_block_scores
from lisa.layers import LayerMap, block_index

__all__ = ["DIRECTIONS", "OutlierSource", "block_linear_layers", "input_feature_norms"]

DIRECTIONS = ("favour", "reverse")


def block_linear_layers(model: nn.Module, layer_map: LayerMap) -> dict[int, list[tuple[str, nn.Module]]]:
    """The linear layers (nn.Linear, GPT-2's Conv1D) of every block, by block index.

    LoRA adapter layers of a peft model are skipped: only the pretrained weights are scored.
    """
    from transformers.pytorch_utils import Conv1D

    layers: dict[int, list[tuple[str, nn.Module]]] = {i: [] for i in range(layer_map.num_blocks)}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D) or "lora_" in name:
            continue
        try:
            group = layer_map.group_of(f"{name}.weight")
        except KeyError:
            continue
        index = block_index(group)
        if index is not None:
            layers[index].append((name, module))
    return layers


@torch.no_grad()
def input_feature_norms(
    model: nn.Module, modules: Iterable[nn.Module], batches: Iterable[Batch]
) -> dict[int, torch.Tensor]:
    """||X_j||_2 of every input feature j of each module, over the real tokens of ``batches``.

    Padding positions (``attention_mask`` 0) are left out. Sums of squares accumulate in
    float64. The model runs in eval mode and is put back in its mode afterwards.

    Returns:
        id(module) -> float64 tensor of shape (in_features,).
    """
    sums: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor | None] = {"mask": None}

    def hook(module, inputs, _output):
        x = inputs[0].detach()
        features = x.reshape(-1, x.shape[-1])  # (tokens, in_features)
        mask = current["mask"]
        if mask is not None and mask.numel() == features.shape[0]:
            features = features[mask.reshape(-1).bool()]
        squares = features.double().square().sum(dim=0)
        key = id(module)
        sums[key] = squares if key not in sums else sums[key] + squares

    handles = [module.register_forward_hook(hook) for module in modules]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            current["mask"] = inputs.get("attention_mask")
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {key: value.sqrt() for key, value in sums.items()}


@dataclass(frozen=True)
class OutlierSource:
    """OWL's layerwise outlier ratio per block, favoured (OwLore) or reversed.

    Args:
        threshold: M, an entry is an outlier when A_ij > M * mean(A) over the block (OWL's
            LLaMA-7B script uses M = 5).
        direction: ``favour`` (more outliers, higher score) or ``reverse`` (the mirrored
            profile, s' = max(s) + min(s) - s).

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> model = build_tiny_model("tiny-llama", num_blocks=3, seed=0)
        >>> ids = torch.arange(12).reshape(2, 6)
        >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        >>> scores = OutlierSource(threshold=3).block_scores(model, batches=[batch])
        >>> scores.shape, bool(((scores >= 0) & (scores <= 1)).all())
        ((3,), True)
    """

    name: ClassVar[str] = "outlier"
    requires: ClassVar[tuple[str, ...]] = ("model", "batches")

    threshold: float = 5.0
    direction: str = "favour"

    def __post_init__(self) -> None:
        try:
            threshold = float(self.threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if isinstance(self.threshold, bool) or not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"threshold={self.threshold!r} must be a finite number > 0 (M)")
        object.__setattr__(self, "threshold", threshold)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r} is not one of {DIRECTIONS}")

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "direction": self.direction}

    def outlier_ratios(self, model: nn.Module, batches: Iterable[Batch]) -> np.ndarray:
        """The fraction of each block's entries with A_ij > M * mean(A) (before ``direction``)."""
        from transformers.pytorch_utils import Conv1D

        layer_map = LayerMap.from_model(model)
        layers = block_linear_layers(model, layer_map)
        empty = [index for index, found in layers.items() if not found]
        if empty:
            raise ValueError(
                f"block {empty[0]} has no linear layer; the outlier source scores linear weights"
            )
        modules = [module for found in layers.values() for _, module in found]
        norms = input_feature_norms(model, modules, batches)
        if not norms:
            raise ValueError("the outlier source got no batches; pass at least one")
        ratios = np.empty(layer_map.num_blocks)
        for index, found in layers.items():
            metrics = []
            for _, module in found:
                weight = module.weight.detach().double().abs()
                feature_norms = norms[id(module)]
                # Linear stores (out, in); Conv1D stores (in, out): scale along the input axis.
                scale = feature_norms[:, None] if isinstance(module, Conv1D) else feature_norms[None, :]
                metrics.append((weight * scale).reshape(-1))
            metric = torch.cat(metrics)  # every entry of the block's linear weights
            ratios[index] = float((metric > self.threshold * metric.mean()).double().mean())
        return ratios

    def block_scores(
        self,
        model: nn.Module | None = None,
        *,
        batches: Iterable[Batch] | None = None,
        norms: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Outlier ratios per block (``favour``) or their mirror image (``reverse``)."""
        if not isinstance(model, nn.Module):
            raise ValueError("the outlier source needs model=<the model to score>")
        if batches is None:
            raise ValueError("the outlier source needs batches=<a few tokenised batches>")
        ratios = self.outlier_ratios(model, batches)
        if not ratios.any():
            raise ValueError(
                f"no block has an entry above threshold M={self.threshold:g} times its mean; "
                "lower the threshold"
            )
        scores = ratios if self.direction == "favour" else ratios.max() + ratios.min() - ratios
        return check_block_scores(scores, len(ratios), f"outlier (M={self.threshold:g})")
