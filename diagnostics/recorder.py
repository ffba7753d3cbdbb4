"""NormRecorder: per-layer norms every n steps as a tidy table, streamed to CSV as it goes.

One row per (run, method, step, group, kind, reduce), id columns first:

    run, method, step, group, block_index, kind, reduce, norm

With a path, every ``record`` call appends its complete rows to the CSV in a single write and
fsyncs, so a run that crashes keeps every row recorded before the crash; ``load_norms`` ignores
a final line cut short by a kill. ``save`` rewrites CSV and JSON sidecar atomically (temporary
file + ``os.replace``). The transformers adapter lives in ``diagnostics.recorder_callback``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from diagnostics.files import atomic_write_text, library_versions
from diagnostics.norms import NORM_KINDS, REDUCTIONS, _lora_layers, layer_norms
from lisa.layers import LayerMap, block_index
from lisa.validation import check_int

__all__ = ["COLUMNS", "NormRecorder", "load_norms", "load_sidecar", "sidecar_path"]

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "run",
    "method",
    "step",
    "group",
    "block_index",
    "kind",
    "reduce",
    "norm",
)
SIDECAR_FORMAT = "lisa-norms-sidecar"


def sidecar_path(csv_path: str | os.PathLike) -> Path:
    """The JSON sidecar next to a norms CSV: ``norms.csv`` -> ``norms.json``."""
    return Path(csv_path).with_suffix(".json")


def _resolve_csv(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".csv" or path.is_file() else path / "norms.csv"


def _rows_to_csv(rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, "block_index": "" if row["block_index"] is None else row["block_index"]}
        )
    return buffer.getvalue()


class NormRecorder:
    """Record per-layer norms of a model every ``every`` steps.

    Args:
        kinds: norm kinds to record ("weight", "trainable", "delta"; see diagnostics.norms).
        reduce: one reduction or several ("l2", "rms").
        every: record at steps divisible by ``every`` (step 0 included).
        run: run identifier written in every row.
        method: training method written in every row ("lora", "ft", "lisa", ...).
        path: None (memory only), a ``.csv`` file, or a directory (``DIR/norms.csv``).
        layer_map: the model's LayerMap; built at the first record when None.
        reference: the step-0 model or state_dict for kind "delta". When None and the model has
            no LoRA adapters, the recorder snapshots all parameters at its first record (one
            extra copy of the model in memory).
        settings: extra JSON-able settings stored in the sidecar (learning rate, rank...).

    Returns:
        ``record`` returns the new rows; ``table`` all rows so far (a copy).

    Example:
        >>> from lisa_apps.models import load_model
        >>> model, _ = load_model("tiny-llama")
        >>> recorder = NormRecorder(kinds=("weight",), method="ft")
        >>> for step in range(3):
        ...     rows = recorder.record(step, model)  # then train a step
        >>> recorder.table.columns[:3].tolist()
        ['run', 'method', 'step']
        >>> len(recorder.table)  # 3 steps x 7 groups
        21
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("weight",),
        reduce: str | Sequence[str] = "l2",
        every: int = 1,
        run: str = "run",
        method: str = "ft",
        path: str | os.PathLike | None = None,
        layer_map: LayerMap | None = None,
        reference: nn.Module | Mapping[str, torch.Tensor] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        reductions = (reduce,) if isinstance(reduce, str) else tuple(reduce)
        for kind in kinds:
            if kind not in NORM_KINDS:
                raise ValueError(f"kinds contains {kind!r}; choose from {NORM_KINDS}")
        for reduction in reductions:
            if reduction not in REDUCTIONS:
                raise ValueError(f"reduce contains {reduction!r}; choose from {REDUCTIONS}")
        if not kinds or not reductions:
            raise ValueError("kinds and reduce must each name at least one value")
        check_int("every", every, hint="1 records every step")
        self.kinds = kinds
        self.reductions = reductions
        self.every = every
        self.run = str(run)
        self.method = str(method)
        self.path = None if path is None else _resolve_csv(path)
        self.layer_map = layer_map
        self.reference = reference
        self.settings = dict(settings or {})
        self.record_seconds = 0.0  # wall time spent inside record(), for overhead reports
        self.record_count = 0
        self._rows: list[dict] = []
        self._model_info: dict[str, Any] = {}
        self._header_written = False

    def should_record(self, step: int) -> bool:
        """True at the steps this recorder records (multiples of ``every``)."""
        return step % self.every == 0

    def _start(self, model: nn.Module) -> None:
        if self.layer_map is None:
            self.layer_map = LayerMap.from_model(model)
        if "delta" in self.kinds and self.reference is None and not _lora_layers(model):
            self.reference = {name: p.detach().clone() for name, p in model.named_parameters()}
        config = getattr(model, "config", None)
        signature = self.layer_map.signature()
        self._model_info = {
            "model_class": type(model).__name__,
            "model_name": getattr(config, "_name_or_path", None) or None,
            "group_names": list(self.layer_map.group_names),
            "num_blocks": self.layer_map.num_blocks,
            "tied": bool(self.layer_map.tied),
            "layer_signature": signature,
        }
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A fresh recording replaces an older file rather than appending to it.
            atomic_write_text(self.path, _rows_to_csv([], header=True))
            atomic_write_text(sidecar_path(self.path), self._sidecar_text())
            self._header_written = True

    def record(self, step: int, model: nn.Module, *, force: bool = False) -> pd.DataFrame:
        """Measure the model at ``step`` (if due, or ``force``) and append the rows."""
        if not (force or self.should_record(step)):
            return pd.DataFrame(columns=list(COLUMNS))
        started = time.perf_counter()
        if not self._model_info:
            self._start(model)
        rows = []
        for kind in self.kinds:
            for reduction in self.reductions:
                norms = layer_norms(
                    model, self.layer_map, kind=kind, reduce=reduction, reference=self.reference
                )
                for group, value in norms.items():
                    rows.append(
                        {
                            "run": self.run,
                            "method": self.method,
                            "step": int(step),
                            "group": group,
                            "block_index": block_index(group),
                            "kind": kind,
                            "reduce": reduction,
                            "norm": float(value),
                        }
                    )
        if self.path is not None:
            # One write of whole rows, then fsync: a crash keeps complete rows only.
            with open(self.path, "a", newline="") as file:
                file.write(_rows_to_csv(rows, header=False))
                file.flush()
                os.fsync(file.fileno())
        self._rows.extend(rows)
        self.record_seconds += time.perf_counter() - started
        self.record_count += 1
        return _frame(rows)

    @property
    def table(self) -> pd.DataFrame:
        """All rows recorded so far, id columns first."""
        return _frame(self._rows)

    def sidecar(self) -> dict[str, Any]:
        """Provenance: model, layer names, recorder settings, library versions."""
        return {
            "format": SIDECAR_FORMAT,
            "version": 1,
            "columns": list(COLUMNS),
            **self._model_info,
            "recorder": {
                "kinds": list(self.kinds),
                "reduce": list(self.reductions),
                "every": self.every,
                "run": self.run,
                "method": self.method,
            },
            "settings": self.settings,
            "versions": library_versions(),
            "rows": len(self._rows),
            "record_seconds": self.record_seconds,
            "record_count": self.record_count,
        }

    def _sidecar_text(self) -> str:
        return json.dumps(self.sidecar(), indent=2, default=str) + "\n"

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the table as CSV plus JSON sidecar, atomically; returns the CSV path."""
        target = self.path if path is None else _resolve_csv(path)
        if target is None:
            raise ValueError("save() needs a path: this recorder was created with path=None")
        atomic_write_text(target, _rows_to_csv(self._rows, header=True))
        atomic_write_text(sidecar_path(target), self._sidecar_text())
        logger.info("saved %d norm rows to %s", len(self._rows), target)
        return target


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["step"] = frame["step"].astype("int64")
    frame["block_index"] = frame["block_index"].astype("Int64")
    frame["norm"] = frame["norm"].astype("float64")
    return frame


def load_norms(path: str | os.PathLike) -> pd.DataFrame:
    """Read a norms CSV written by NormRecorder (a directory means ``DIR/norms.csv``).

    A final line without its newline (a write cut short by a crash) is dropped. The sidecar,
    when present, is attached as ``frame.attrs["sidecar"]``.
    """
    csv_path = _resolve_csv(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist; pass a norms.csv of lisa diagnose")
    try:
        text = csv_path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        frame = pd.read_csv(io.StringIO(text), dtype={"run": str, "method": str, "group": str})
    except (UnicodeDecodeError, ValueError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(
            f"{csv_path} is not a norms table (a CSV written by lisa diagnose): {error}"
        ) from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{csv_path} is not a norms table (a CSV written by lisa diagnose): missing columns "
            f"{missing}"
        )
    try:
        frame = _frame(frame[list(COLUMNS)].to_dict("records"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{csv_path}: a column holds values of the wrong type ({error})") from None
    side = sidecar_path(csv_path)
    if side.exists():
        frame.attrs["sidecar"] = load_sidecar(csv_path)
    return frame


def load_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON sidecar of a norms CSV (pass the CSV or the sidecar path)."""
    path = Path(path)
    side = path if path.suffix == ".json" else sidecar_path(_resolve_csv(path))
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{side} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{side} is not a norms sidecar (format != {SIDECAR_FORMAT!r})")
    return data
