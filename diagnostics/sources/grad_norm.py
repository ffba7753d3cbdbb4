"""grad-norm: how hard the loss pulls on each block, from forward and backward passes only.

The score of block l is the norm of the loss gradient with respect to the block's parameters,
averaged over B batches,

    s_l = (1 / B) * sum_b || d loss_b / d theta^l ||_2      (``rms``: divided by sqrt(|theta^l|)),

the importance signal of the gradient-based samplers (MISA, Liu et al. 2025, arXiv 2511.00056,
scores modules by their gradient norm; here one score per block). It needs no optimizer and no optimizer state: one forward and one
backward pass per batch, with gradients kept only for the blocks, so it runs on a model whose
full fine-tuning probe (weights + grads + two Adam moments) would not fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from diagnostics.norms import REDUCTIONS
from diagnostics.sources.base import Batch, check_block_scores
from lisa.layers import LayerMap

__all__ = ["GradNormSource", "block_gradient_norms"]


def block_gradient_norms(
    model: nn.Module, batch: Batch, layer_map: LayerMap | None = None, *, reduce: str = "l2"
) -> np.ndarray:
    """||d loss / d theta^l|| of every block for one batch (float64, shape (num_blocks,)).

    The model runs in eval mode (no dropout, so the result depends on the weights and the batch
    only); only block parameters get gradients, and every gradient, requires_grad flag and the
    train/eval mode are restored afterwards. No optimizer is built.

    Args:
        model: a causal LM that returns ``.loss`` when given ``labels``.
        batch: ``input_ids``, ``attention_mask``, ``labels`` tensors.
        layer_map: the model's LayerMap (built when None).
        reduce: ``l2`` or ``rms`` (divided by the square root of the block's element count).

    Returns:
        One gradient norm per block.
    """
    layer_map = layer_map or LayerMap.from_model(model)
    parameters = [p for _, p in model.named_parameters()]
    saved_flags = [p.requires_grad for p in parameters]
    saved_grads = [p.grad for p in parameters]
    block_ids = {
        id(p) for i in range(layer_map.num_blocks) for _, p in layer_map.block_parameters(i)
    }
    was_training = model.training
    device = next(model.parameters()).device
    try:
        for parameter in parameters:
            parameter.grad = None
            # E, H and extras need no gradient of their own: backward still flows through them.
            parameter.requires_grad_(id(parameter) in block_ids)
        model.eval()
        inputs = {key: value.to(device) for key, value in batch.items()}
        with torch.enable_grad():
            loss = model(**inputs).loss
            loss.backward()
        norms = np.empty(layer_map.num_blocks)
        for index in range(layer_map.num_blocks):
            squares, numel = 0.0, 0
            for _, parameter in layer_map.block_parameters(index):
                numel += parameter.numel()
                if parameter.grad is not None:
                    squares += float(parameter.grad.detach().double().square().sum())
            norms[index] = math.sqrt(squares) / (math.sqrt(numel) if reduce == "rms" else 1.0)
    finally:
        for parameter, flag, grad in zip(parameters, saved_flags, saved_grads, strict=True):
            parameter.grad = grad
            parameter.requires_grad_(flag)
        model.train(was_training)
    return norms


@dataclass(frozen=True)
class GradNormSource:
    """s_l = mean over batches of the block's gradient norm (forward + backward, no optimizer).

    Args:
        reduce: ``l2`` (the norm) or ``rms`` (the norm over sqrt(number of elements), which
            compares blocks of different sizes per element).

    Example:
        >>> from lisa_apps.tiny import build_tiny_model
        >>> model = build_tiny_model("tiny-llama", num_blocks=3, seed=0)
        >>> ids = torch.arange(12).reshape(2, 6)
        >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        >>> scores = GradNormSource().block_scores(model, batches=[batch])
        >>> scores.shape, bool((scores > 0).all())
        ((3,), True)
    """

    name: ClassVar[str] = "grad-norm"
    requires: ClassVar[tuple[str, ...]] = ("model", "batches")

    reduce: str = "l2"

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce={self.reduce!r} is not one of {REDUCTIONS}")

    def settings(self) -> dict[str, Any]:
        return {"reduce": self.reduce}

    def block_scores(
        self,
        model: nn.Module | None = None,
        *,
        batches: Iterable[Batch] | None = None,
        norms: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Mean over ``batches`` of each block's gradient norm (exact sum: order-independent)."""
        if not isinstance(model, nn.Module):
            raise ValueError("the grad-norm source needs model=<the model to score>")
        if batches is None:
            raise ValueError("the grad-norm source needs batches=<a few tokenised batches>")
        layer_map = LayerMap.from_model(model)
        per_batch = [
            block_gradient_norms(model, batch, layer_map, reduce=self.reduce) for batch in batches
        ]
        if not per_batch:
            raise ValueError("the grad-norm source got no batches; pass at least one")
        columns = np.stack(per_batch, axis=1)  # (num_blocks, num_batches)
        # fsum is exact, so the mean does not depend on the order of the batches.
        means = np.array([math.fsum(row) / len(per_batch) for row in columns])
        return check_block_scores(means, layer_map.num_blocks, "grad-norm")
