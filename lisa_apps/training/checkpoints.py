"""Checkpoints of ``lisa train`` and resuming from them: the Trainer's layout, LISA's schedule inside.

A checkpoint is transformers.Trainer's ``checkpoint-N/`` folder in the run folder: the weights
(a LoRA run: its adapters), ``optimizer.pt``, ``scheduler.pt``, the RNG states
(``rng_state.pth``, one per rank under DDP) and ``trainer_state.json``, which holds the step,
the log history, the data position (the Trainer skips the batches already taken) and, under
``stateful_callbacks["LisaCallback"]``, LISA's schedule (:meth:`lisa.engine.Lisa.state_dict`:
step, active set, the generator's state, the draws so far). A run resumed from it continues
the same losses, draws and weights as the run that was not stopped.

A resumed run continues the earlier one in the same folder (:class:`ResumedRunFolder`): the
earlier run's files stay listed in its manifest ``lisa-run.json``, and the Trainer deletes an
old checkpoint (beyond ``save_total_limit``) only after it has written a newer one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lisa_apps.folder_lock import lock_holder
from lisa_apps.outputs import MANIFEST, OutputError, RunFolder

__all__ = [
    "CHECKPOINT_PATTERN",
    "RecordCheckpoints",
    "ResumedRunFolder",
    "checkpoint_step",
    "latest_checkpoint",
    "resolve_resume",
]

# checkpoint-<global step>, the Trainer's folder name (transformers.trainer_utils.PREFIX_CHECKPOINT_DIR).
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


class RecordCheckpoints(TrainerCallback):
    """List each ``checkpoint-N`` in the run folder's manifest before the Trainer writes it.

    Recorded first, so a run killed while it writes a checkpoint still owns the partial folder
    (``--overwrite`` then replaces it too).
    """

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and state.is_world_process_zero:
            self.folder.file(f"checkpoint-{state.global_step}")


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer steps a checkpoint was taken after (its ``trainer_state.json``)."""
    state = json.loads((Path(path) / TRAINER_STATE).read_text())
    return int(state["global_step"])


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-N`` with the largest N in ``folder``, or None.

    A folder without ``trainer_state.json`` (a run killed while writing it) does not count:
    the Trainer writes that file last.

    Example:
        >>> import tempfile
        >>> latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    found = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and (entry / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), entry))
    return max(found)[1] if found else None


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_resume(
    spec: str, out: str | os.PathLike, *, command: str, model: str, method: str
) -> Path:
    """The checkpoint ``--resume`` names, checked before any work (ValueError otherwise).

    ``auto`` is the newest complete checkpoint in ``out``; a path must be a ``checkpoint-N``
    folder. The run folder that holds it must be a ``command`` run of the same model and method.
    """
    if spec == "auto":
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise ValueError(
                f"--resume auto: {out} holds no checkpoint-N folder to resume from; train with "
                "--save-steps N to write checkpoints, or drop --resume"
            )
    else:
        checkpoint = Path(spec)
        if not (checkpoint / TRAINER_STATE).is_file():
            raise ValueError(
                f"--resume {spec} is not a Trainer checkpoint (no {TRAINER_STATE}); pass a "
                "checkpoint-N folder of an earlier run, or auto for the newest one in --out"
            )
    run = checkpoint.parent
    manifest = _manifest(run)
    if manifest is None:
        raise ValueError(
            f"--resume {spec}: {run} holds no {MANIFEST}, so it is not a `{command}` run folder; "
            "resume from a checkpoint that a run of this command wrote"
        )
    earlier_arguments = manifest.get("arguments") or {}
    if manifest.get("command") != command:
        raise ValueError(
            f"--resume {spec}: {run} holds a run of `{manifest.get('command')}`, not "
            f"`{command}`; resume a `{command}` run"
        )
    for name, value in (("model", model), ("method", method)):
        earlier = earlier_arguments.get(name)
        if earlier is not None and str(earlier) != str(value):
            raise ValueError(
                f"--resume {spec}: that run trained --{name} {earlier}, this one asks for "
                f"--{name} {value}; pass --{name} {earlier} to resume it"
            )
    return checkpoint


class ResumedRunFolder(RunFolder):
    """The folder of a run that a resumed run continues: earlier files are kept and stay listed.

    Like :class:`lisa_apps.study.folder.StudyFolder`, ``check`` accepts the folder of an earlier
    run of the same command (its manifest); the resumed run writes into it in place.
    """

    def check(self) -> ResumedRunFolder:
        manifest = _manifest(self.path)
        if manifest is None or manifest.get("command") != self.command:
            raise OutputError(
                f"{self.label} {self.path} is not the folder of an earlier `{self.command}` run; "
                "resume into the folder that holds the checkpoint"
            )
        holder = lock_holder(self.path)
        if holder is not None:  # the run is still going: one writer at a time
            raise OutputError(
                f"{self.label} {self.path} is being written by pid {holder.get('pid')} "
                f"({holder.get('command')}); wait for it to stop before resuming"
            )
        self.resuming = True
        if not self.written:
            self.written = [str(name) for name in manifest.get("files", [])]
        return self
