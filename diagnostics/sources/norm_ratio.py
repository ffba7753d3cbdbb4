"""norm-ratio: the paper's importance weight, w_LoRA^l / w_FT^l, from a recorded norms table.

Pan et al. (2024, arXiv 2403.17919) sample layer l with probability proportional to the ratio of
its mean norm under LoRA to its mean norm under full fine-tuning; ``lisa diagnose`` records both
profiles (every norm kind and reduction of :mod:`diagnostics.norms`), and this source reads the
ratio of one kind and reduction from that table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import nn

from diagnostics.norms import NORM_KINDS, REDUCTIONS
from diagnostics.sources.base import Batch, check_block_scores
from lisa.layers import LayerMap

__all__ = ["NormRatioSource"]


@dataclass(frozen=True)
class NormRatioSource:
    """s_l = w_LoRA^l / w_FT^l, w^l the mean over recorded steps of block l's norm.

    Args:
        kind: the norm kind (``weight``, ``trainable`` or ``delta``).
        reduce: the reduction (``l2`` or ``rms``).
        lora_method, ft_method: the ``method`` values of the two probes' rows.

    Example:
        >>> table = pd.DataFrame({
        ...     "method": ["lora", "lora", "ft", "ft"], "block_index": [0, 1, 0, 1],
        ...     "kind": "weight", "reduce": "l2", "norm": [4.0, 1.0, 2.0, 1.0]})
        >>> NormRatioSource().block_scores(norms=table).tolist()
        [2.0, 1.0]
    """

    name: ClassVar[str] = "norm-ratio"
    requires: ClassVar[tuple[str, ...]] = ("norms",)

    kind: str = "weight"
    reduce: str = "l2"
    lora_method: str = "lora"
    ft_method: str = "ft"

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {NORM_KINDS}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce={self.reduce!r} is not one of {REDUCTIONS}")
        for field_name in ("lora_method", "ft_method"):
            if not isinstance(getattr(self, field_name), str) or not getattr(self, field_name):
                raise ValueError(f"{field_name} must be a non-empty method name")

    def settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reduce": self.reduce,
            "lora_method": self.lora_method,
            "ft_method": self.ft_method,
        }

    def block_scores(
        self,
        model: nn.Module | None = None,
        *,
        batches: Iterable[Batch] | None = None,
        norms: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Ratios of the two probes' per-block mean norms (``model`` only checks the count)."""
        from diagnostics.policy import block_means  # policy imports nothing from sources

        if not isinstance(norms, pd.DataFrame):
            raise ValueError(
                "the norm-ratio source needs norms=<a norms table from lisa diagnose> "
                "(diagnostics.load_norms)"
            )
        methods = set(norms["method"]) if "method" in norms.columns else set()
        profiles = []
        for method in (self.lora_method, self.ft_method):
            if method not in methods:
                raise ValueError(
                    f"the norms table has no rows of method {method!r} (it has {sorted(methods)})"
                )
            profiles.append(
                block_means(
                    norms[norms["method"] == method], kind=self.kind, reduce=self.reduce
                )
            )
        lora, ft = profiles
        if lora.shape != ft.shape:
            raise ValueError(
                f"the LoRA profile has {lora.size} blocks but the FT profile has {ft.size}"
            )
        if np.any(ft <= 0) or not np.all(np.isfinite(ft)):
            raise ValueError(
                f"FT block norms ({self.kind}, {self.reduce}) must be positive and finite to "
                "divide by them; record more steps or pick another kind"
            )
        num_blocks = None if model is None else LayerMap.from_model(model).num_blocks
        return check_block_scores(lora / ft, num_blocks, f"norm-ratio ({self.kind}, {self.reduce})")
