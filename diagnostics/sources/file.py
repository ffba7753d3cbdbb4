"""file: block scores a user supplies, one per block, in a CSV or JSON file.

Accepted layouts (``block`` may be an index ``3`` or a group name ``block.3``; without it the
scores are taken in block order):

- CSV with a header: a ``score`` column, optionally a ``block`` (or ``block_index``) column;
- JSON: a list of numbers, ``{"scores": [...]}``, or ``{"block.0": 1.5, "block.1": ...}``.

Every score must be a finite number >= 0, not all zero, and there must be exactly one per block
of the model the policy is for.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import nn

from diagnostics.sources.base import Batch, check_block_scores
from lisa.layers import LayerMap, block_index

__all__ = ["FileSource", "read_scores"]

SUFFIXES = (".csv", ".json")


def _block_position(value: Any, where: str) -> int:
    if isinstance(value, str):
        index = block_index(value.strip())
        if index is None and value.strip().isdigit():
            index = int(value.strip())
    elif (isinstance(value, int | np.integer) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer()
    ):
        index = int(value)
    else:
        index = None
    if index is None or index < 0:
        raise ValueError(f"{where}: block {value!r} is neither an index (3) nor a name (block.3)")
    return index


def _ordered(pairs: list[tuple[int, Any]], where: str) -> list[Any]:
    positions = [position for position, _ in pairs]
    if sorted(positions) != list(range(len(positions))):
        duplicates = sorted({p for p in positions if positions.count(p) > 1})
        if duplicates:
            raise ValueError(f"{where}: block {duplicates[0]} is given more than once")
        raise ValueError(
            f"{where}: the blocks are {sorted(positions)}, not 0..{len(positions) - 1}; give one "
            "score for every block"
        )
    return [value for _, value in sorted(pairs, key=lambda pair: pair[0])]


def _number(value: Any, where: str, position: int) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: score of block {position} is {value!r}, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score of block {position} is {value!r}, not a number") from None
    if math.isnan(number):
        raise ValueError(f"{where}: score of block {position} is NaN; scores must be finite")
    return number


def read_scores(path: str | os.PathLike) -> np.ndarray:
    """The scores in a CSV or JSON file, in block order (not yet checked against a model).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, an unreadable layout, a non-number or NaN, a missing or
            repeated block (the message names the file and the block).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "scores.json"
        >>> _ = path.write_text('{"block.1": 2, "block.0": 1}')
        >>> read_scores(path).tolist()
        [1.0, 2.0]
    """
    path = Path(path)
    where = str(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{where}: scores must be a .csv or .json file")
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{where} is not valid JSON: {error}") from None
        if isinstance(data, dict) and set(data) == {"scores"}:
            data = data["scores"]
        if isinstance(data, list):
            values = list(data)
        elif isinstance(data, dict):
            values = _ordered([(_block_position(k, where), v) for k, v in data.items()], where)
        else:
            raise ValueError(
                f"{where}: expected a list of scores, {{\"scores\": [...]}} or "
                "{\"block.0\": score, ...}"
            )
    else:
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ValueError(f"{where} is not a readable CSV file: {error}") from None
        if "score" not in table.columns:
            raise ValueError(
                f"{where}: no 'score' column (columns: {list(table.columns)}); write a header "
                "line 'block,score' or 'score'"
            )
        block_column = next((c for c in ("block", "block_index") if c in table.columns), None)
        values = table["score"].tolist()
        if block_column is not None:
            positions = [_block_position(v, where) for v in table[block_column].tolist()]
            values = _ordered(list(zip(positions, values, strict=True)), where)
    return np.array([_number(v, where, i) for i, v in enumerate(values)], dtype=np.float64)


@dataclass(frozen=True)
class FileSource:
    """Scores read from a CSV or JSON file (see the module docstring for the layouts).

    Args:
        path: the file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "scores.csv"
        >>> _ = path.write_text("block,score\\n0,1.0\\n1,3.0\\n")
        >>> FileSource(path).block_scores().tolist()
        [1.0, 3.0]
    """

    name: ClassVar[str] = "file"
    requires: ClassVar[tuple[str, ...]] = ()

    path: str | os.PathLike = ""

    def __post_init__(self) -> None:
        if not str(self.path):
            raise ValueError("the file source needs path=<a .csv or .json file of scores>")
        object.__setattr__(self, "path", str(self.path))

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def block_scores(
        self,
        model: nn.Module | None = None,
        *,
        batches: Iterable[Batch] | None = None,
        norms: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """The file's scores, checked: one per block of ``model`` (when given), finite, >= 0."""
        num_blocks = None if model is None else LayerMap.from_model(model).num_blocks
        return check_block_scores(read_scores(self.path), num_blocks, str(self.path))
