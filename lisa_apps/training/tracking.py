"""Training logs beyond log_history.csv: TensorBoard event files for the plain (FSDP2) loop.

The Trainer path reports through transformers' own integrations (``report_to``; TensorBoard
through ``transformers.integrations.TensorBoardCallback`` with a writer into the run folder).
The loop writes the same rows through the same ``torch.utils.tensorboard.SummaryWriter``: every
number as a scalar, LISA's active blocks (``"3,17"``) as text, at the row's step, so the two
paths give the same tags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["TENSORBOARD_FOLDER", "TensorBoardWriter"]

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
