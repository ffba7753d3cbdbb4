"""StudyFolder: a RunFolder that an identical study command resumes instead of refusing.

A study writes each finished run as it finishes. Re-running the same command into the same
folder continues it: the manifest's recorded settings are compared with the new ones, and when
they are equal nothing is removed. Different settings are refused (naming the first one that
differs), unless ``--overwrite`` replaces the earlier study; any other non-empty folder is
refused as :class:`lisa_apps.outputs.RunFolder` refuses it.
"""

from __future__ import annotations

import json
from typing import Any

from lisa_apps.folder_lock import describe, lock_holder
from lisa_apps.outputs import MANIFEST, OutputError, RunFolder

__all__ = ["STUDY_COMMAND", "StudyFolder"]

STUDY_COMMAND = "lisa study"


# Settings a study may gain on resume when it began without them: the study's finished runs
# are checked against them instead (lisa_apps.study.runner.check_resumed_rates).
CHECKED_BY_THE_RUNS = ("lr_base",)


def _first_difference(earlier: dict[str, Any], now: dict[str, Any]) -> str | None:
    for key in sorted(set(earlier) | set(now)):
        if key in CHECKED_BY_THE_RUNS and key not in earlier:
            continue
        if earlier.get(key) != now.get(key):
            return f"{key}: {earlier.get(key)!r} there, {now.get(key)!r} now"
    return None


class StudyFolder(RunFolder):
    """The output folder of a study: new, or the same study's folder (resumed), or refused.

    Args:
        path: the folder.
        arguments: the study's settings (``StudySettings.to_dict()``), compared on resume.
        overwrite: replace an earlier study (or run) in the folder instead of resuming.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "study"
        >>> with StudyFolder(path, {"seeds": 2}).check() as folder:
        ...     _ = folder.write_text("runs.csv", "run_id\\n")
        >>> StudyFolder(path, {"seeds": 2}).check().resuming
        True
        >>> StudyFolder(path, {"seeds": 3}).check()
        Traceback (most recent call last):
        ...
        lisa_apps.outputs.OutputError: --out ... holds a study with other settings (seeds: 2 there, 3 now); re-run that command to resume it, pass --overwrite to replace it, or choose a new folder
    """

    def __init__(self, path, arguments: dict[str, Any], *, overwrite: bool = False) -> None:
        # JSON round trip: the manifest stores JSON, so compare like with like.
        plain = json.loads(json.dumps(arguments, default=str))
        super().__init__(path, command=STUDY_COMMAND, arguments=plain, overwrite=overwrite)
        self.earlier_status: str | None = None

    def _earlier(self) -> dict[str, Any] | None:
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def check(self) -> StudyFolder:
        """Decide: a new folder, the same study (resume), or refuse (OutputError)."""
        earlier = self._earlier()
        if earlier is not None and earlier.get("command") == STUDY_COMMAND and not self.overwrite:
            difference = _first_difference(earlier.get("arguments") or {}, self.arguments)
            if difference is not None:
                raise OutputError(
                    f"{self.label} {self.path} holds a study with other settings ({difference}); "
                    "re-run that command to resume it, pass --overwrite to replace it, or "
                    "choose a new folder"
                )
            holder = lock_holder(self.path)
            if holder is not None:  # that study is still running: one writer at a time
                raise OutputError(describe(self.path, holder, self.label))
            self.resuming = True
            self.earlier_status = earlier.get("status")
            self.written = [str(name) for name in earlier.get("files", [])]
            return self
        self.resuming = False
        super().check()
        return self
