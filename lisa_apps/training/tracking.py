"""Training logs beyond log_history.csv: TensorBoard and wandb for the plain (FSDP2) loop.

The Trainer path reports through transformers' own integrations (``report_to``; TensorBoard
through ``transformers.integrations.TensorBoardCallback`` with a writer into the run folder,
wandb through ``WandbCallback``). The loop writes the same rows through the same writers, with
the Trainer's tags: ``torch.utils.tensorboard.SummaryWriter`` (every number as a scalar, LISA's
active blocks, ``"3,17"``, as text, at the row's step) and a wandb run (each row as one history
entry, keys under ``train/``, the step as ``train/global_step``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["TENSORBOARD_FOLDER", "TensorBoardWriter", "WandbWriter", "open_writer"]

# The run folder's subfolder that holds TensorBoard event files (`tensorboard --logdir RUN`).
TENSORBOARD_FOLDER = "tensorboard"


class TensorBoardWriter:
    """Writes log rows (``{"step": 3, "loss": 2.1, ...}``) as TensorBoard scalars and text.

    Example:
        >>> import tempfile
        >>> writer = TensorBoardWriter(tempfile.mkdtemp())
        >>> writer.log({"step": 1, "loss": 2.5, "lisa_active_blocks": "0,3"})
        >>> writer.close()
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or isinstance(value, bool):
                continue
            # The Trainer's TensorBoardCallback writes its keys under "train/": the same tags here.
            tag = f"train/{key}"
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, step)
            elif isinstance(value, str):
                self.writer.add_text(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbWriter:
    """Writes log rows to a wandb run as transformers' ``WandbCallback`` does.

    Like the callback, it logs into the caller's run when one is open (``wandb.run``) and
    otherwise starts one with ``wandb.init``, which reads the usual ``WANDB_*`` variables
    (``WANDB_PROJECT``, default ``"huggingface"``; ``WANDB_MODE=offline``). ``close`` finishes
    the run it started and leaves the caller's open.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        import wandb

        self.started = wandb.run is None
        self.run = wandb.run
        if self.started:
            project = os.getenv("WANDB_PROJECT", "huggingface")
            self.run = wandb.init(project=project, config=dict(config or {}))
        # The callback's x-axis: every key is plotted against train/global_step.
        self.run.define_metric("train/global_step")
        self.run.define_metric("*", step_metric="train/global_step", step_sync=True)

    def log(self, row: Mapping[str, Any]) -> None:
        entry = {
            f"train/{key}": value
            for key, value in row.items()
            if key != "step"
            and isinstance(value, (int, float, str))
            and not isinstance(value, bool)
        }
        self.run.log({**entry, "train/global_step": int(row["step"])})

    def close(self) -> None:
        if self.started:
            self.run.finish()


class _Writers:
    """Several writers as one: each row goes to every one; close closes them all."""

    def __init__(self, writers: list) -> None:
        self.writers = writers

    def log(self, row: Mapping[str, Any]) -> None:
        for writer in self.writers:
            writer.log(row)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def open_writer(report_to: tuple[str, ...], folder, config: Mapping[str, Any] | None = None):
    """The loop's writer for ``report_to`` (``"tensorboard"``, ``"wandb"``), or None for neither.

    Args:
        report_to: :attr:`lisa_apps.training.FinetuneConfig.report_to`.
        folder: the run's :class:`lisa_apps.outputs.RunFolder`, or None; event files go to
            its ``tensorboard`` subfolder (none without a folder, as on the Trainer path).
        config: the run's settings, recorded as the wandb run's config.
    """
    writers: list = []
    if "tensorboard" in report_to and folder is not None:
        writers.append(TensorBoardWriter(folder.file(TENSORBOARD_FOLDER)))
    if "wandb" in report_to:
        writers.append(WandbWriter(config))
    return _Writers(writers) if writers else None
