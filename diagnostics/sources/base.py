"""The ScoreSource protocol: a model (plus batches or recorded norms) in, one score per block out.

A source scores every block of a model with one finite, non-negative number; a policy turns
those scores into inclusion probabilities with
:func:`lisa.samplers.inclusion_probabilities_from_scores` (see
:func:`diagnostics.policy.policy_from_scores`), which ignores their overall scale. Each source
says which inputs it reads (``requires``) and reports its settings, so that a policy records
where its scores came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = ["INPUTS", "Batch", "ScoreSource", "check_block_scores"]

#: What a source may read besides its settings: the model, a few tokenised batches, a norms table.
INPUTS = ("model", "batches", "norms")

Batch = Mapping[str, torch.Tensor]


@runtime_checkable
class ScoreSource(Protocol):
    """Scores the blocks of a model: ``block_scores(...)`` returns shape (num_blocks,), >= 0."""

    name: str
    requires: tuple[str, ...]  # a subset of INPUTS

    def settings(self) -> dict[str, Any]:
        """The source's settings as a JSON-able dict (recorded in a policy's provenance)."""
        ...

    def block_scores(
        self,
        model: nn.Module | None = None,
        *,
        batches: Iterable[Batch] | None = None,
        norms: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """One finite, non-negative float64 score per block of ``model`` (or of ``norms``)."""
        ...


def check_block_scores(scores: Any, num_blocks: int | None, where: str) -> np.ndarray:
    """``scores`` as a float64 vector of one finite, non-negative score per block.

    Args:
        scores: what a source computed or a user supplied.
        num_blocks: the model's block count (None: any length >= 1).
        where: names the source or file in the error.

    Returns:
        A read-only float64 array of shape (num_blocks,).

    Raises:
        ValueError: wrong count, a NaN or infinite score, a negative one, or all zero.

    Example:
        >>> check_block_scores([1.0, -2.0], 2, "scores.csv")
        Traceback (most recent call last):
        ...
        ValueError: scores.csv: score of block 1 is -2.0; scores must be >= 0
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{where}: no scores; give one score per block")
    if num_blocks is not None and values.size != num_blocks:
        raise ValueError(
            f"{where}: {values.size} scores for a model with {num_blocks} blocks; give exactly "
            "one score per block"
        )
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"{where}: score of block {int(bad[0])} is {float(values[bad[0]])!r}; scores must be finite"
        )
    negative = np.flatnonzero(values < 0)
    if negative.size:
        raise ValueError(
            f"{where}: score of block {int(negative[0])} is {float(values[negative[0]])!r}; scores must "
            "be >= 0"
        )
    if not values.any():
        raise ValueError(f"{where}: every score is 0; at least one block needs a positive score")
    values.setflags(write=False)
    return values
