"""Output folders and files that never overwrite, mix with or lose an earlier run's results.

A :class:`RunFolder` is checked before any work (``check``) and opened when the work starts
(``open``). It keeps a manifest, ``lisa-run.json``, listing the command, its arguments, its
status (``running``, ``finished``, ``interrupted``, ``failed``) and every file the run wrote, as
it writes them. The rules (docs/design.md, "Run folders"):

- **ownership**: a folder that is not empty is refused unless ``overwrite`` is set, and even then
  only when its manifest says the same command wrote it; a file of the user's own is never
  touched (:func:`check_output_file` likewise replaces only a file that ``owned`` accepts);
- **atomic replace**: with ``overwrite`` the new run writes into a staging folder beside the old
  one, ``NAME.in-progress-STAMP-PID``; only when it finishes are the two swapped (one
  ``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere) and the old run deleted. A
  failed or interrupted run leaves the old run untouched and its own files in
  ``NAME.incomplete-STAMP``, which the command's message names;
- **one writer**: the folder holds a lock (:mod:`lisa_apps.folder_lock`) while a run writes
  into it; a second writer is refused, and the lock of a process that died is taken over.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diagnostics.files import atomic_write_bytes, atomic_write_text, library_versions
from lisa_apps.folder_lock import LOCK, FolderLock, LockedError, describe, lock_holder

__all__ = [
    "MANIFEST",
    "CommandRuns",
    "LockedError",
    "OutputError",
    "RunFolder",
    "check_output_file",
    "manifest_command",
]

logger = logging.getLogger(__name__)

MANIFEST = "lisa-run.json"

# The commands running in this process, innermost last: each records the folders it opens.
_COMMANDS: list[CommandRuns] = []


class OutputError(ValueError):
    """An output path that cannot be used; the message names it and the fix."""


class CommandRuns:
    """The run folders one command opens, to say what it kept when it is interrupted.

    ``with CommandRuns() as runs:`` records every top-level folder opened inside the block; only
    those are reported, so a run interrupted earlier in the same process (a notebook, a test
    session, a Python API call) never shows up in a later command's message.
    """

    def __init__(self) -> None:
        self.folders: list[RunFolder] = []

    def __enter__(self) -> CommandRuns:
        _COMMANDS.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        _COMMANDS.remove(self)

    def interrupted(self) -> list[RunFolder]:
        """Close this command's still-open folders as interrupted; return all it interrupted."""
        for folder in self.folders:
            if folder.status == "running":
                folder.close("interrupted")
        return [folder for folder in self.folders if folder.status == "interrupted"]


def _writable_ancestor(path: Path, label: str, shown: Path | None = None) -> Path:
    """The nearest existing ancestor of ``path``; refuse a file on the way or no permission.

    ``shown`` is the path the message names (the file the user passed, not its folder).
    """
    shown = path if shown is None else shown
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                where = "" if ancestor == path else f": {ancestor} is a file, not a folder"
                raise OutputError(f"{label} {shown}{where or ' is a file'}; pass a folder path")
            break
    else:  # pragma: no cover - the root always exists
        ancestor = Path("/")
    try:  # a real probe: permission bits lie for root and for read-only mounts
        probe = tempfile.mkdtemp(prefix=".lisa-probe-", dir=ancestor)
    except OSError as error:
        raise OutputError(
            f"{label} {shown}: cannot write in {ancestor.resolve()} ({error.strerror}); choose a "
            "place you can write to"
        ) from None
    os.rmdir(probe)
    return ancestor


def _nonempty(path: str | os.PathLike, label: str) -> Path:
    if not str(path).strip():
        raise OutputError(f"{label} is empty; pass a path")
    return Path(path)


def manifest_command(folder: str | os.PathLike) -> str | None:
    """The command recorded in ``folder``'s manifest, or None without a readable one."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def check_output_file(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    label: str = "--out",
    owned: Callable[[Path], bool] | None = None,
    kind: str = "file",
):
    """Refuse an output file that exists (unless ``overwrite``) or cannot be written.

    With ``overwrite``, an existing file is replaced only when ``owned(path)`` says this project
    wrote it (e.g. a policy JSON); without ``owned`` any earlier file may be replaced.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "policy.json").write_text("{}")
        2
        >>> check_output_file(folder / "policy.json")
        Traceback (most recent call last):
        ...
        lisa_apps.outputs.OutputError: --out ... already exists; pass --overwrite to replace it or choose another file
    """
    target = _nonempty(path, label)
    if target.is_dir():
        raise OutputError(f"{label} {target} is a folder; pass a file path")
    if target.exists() and not overwrite:
        raise OutputError(
            f"{label} {target} already exists; pass --overwrite to replace it or choose another file"
        )
    if target.exists() and owned is not None and not owned(target):
        raise OutputError(
            f"{label} {target} is not a {kind} written by lisa; --overwrite replaces only those, "
            "so choose another file"
        )
    _writable_ancestor(target.parent, label, shown=target)
    return target


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(
        at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange
    )
    return result == 0


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _shown(names: list[str], limit: int = 6) -> str:
    """Whole names, at most ``limit`` of them, and how many more."""
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


class RunFolder:
    """The output folder of one run: checked first, a manifest of what it wrote, no mixing.

    While the run writes, ``path`` is the folder it writes into: ``target`` itself, or with
    ``overwrite`` of an earlier run a staging folder beside it, swapped in when the run
    finishes. ``target`` is always the folder the user named.

    Args:
        path: the folder (created when opened).
        command: what writes it, e.g. "lisa train" (recorded in the manifest; ``overwrite``
            replaces only a run of the same command).
        arguments: the settings to record (JSON-able; others are written as text).
        overwrite: replace an earlier run's results in ``path``.
        label: how messages name the folder, e.g. "--out".

    Example:
        >>> import tempfile
        >>> folder = RunFolder(Path(tempfile.mkdtemp()) / "run", command="example")
        >>> with folder:
        ...     _ = folder.write_text("metrics.json", "{}")
        >>> folder.written
        ['metrics.json']
        >>> RunFolder(folder.path, command="example").check()
        Traceback (most recent call last):
        ...
        lisa_apps.outputs.OutputError: --out ... already holds a run's results (metrics.json); pass --overwrite to replace them or choose a new folder
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        label: str = "--out",
    ) -> None:
        self.target = _nonempty(path, label)
        self.path = self.target
        self.command = command
        self.arguments = dict(arguments or {})
        self.overwrite = overwrite
        self.label = label
        self.written: list[str] = []
        self.status = "new"
        # True when this run continues the earlier one in the folder (a resumed study): open()
        # then writes into it and keeps the earlier files.
        self.resuming = False
        # Where a failed or interrupted replacement left its files (None otherwise).
        self.incomplete: Path | None = None
        self._parent: RunFolder | None = None
        self._lock: FolderLock | None = None
        self._replacing = False

    # before any work ---------------------------------------------------------------------------

    def check(self) -> RunFolder:
        """Raise OutputError if the folder cannot hold this run; nothing is created."""
        path = self.target
        if path.exists() and not path.is_dir():
            raise OutputError(f"{self.label} {path} is a file; pass a folder path")
        _writable_ancestor(path, self.label)
        if not path.is_dir():
            return self
        holder = lock_holder(path)
        if holder is not None:
            raise OutputError(describe(path, holder, self.label))
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if not entries:
            return self
        manifest = path / MANIFEST
        if not self.overwrite:
            shown = _shown([e for e in entries if e != MANIFEST]) or MANIFEST
            owner = "a run's results" if manifest.is_file() else "files"
            raise OutputError(
                f"{self.label} {path} already holds {owner} ({shown}); pass --overwrite "
                "to replace them or choose a new folder"
            )
        if not manifest.is_file():
            raise OutputError(
                f"{self.label} {path} is not empty and holds no {MANIFEST}, so it is not "
                "an earlier run's folder; --overwrite replaces only those; choose a new "
                "or empty folder"
            )
        earlier = manifest_command(path)
        if earlier != self.command:
            raise OutputError(
                f"{self.label} {path} holds a run of `{earlier or 'an unknown command'}`; "
                f"--overwrite replaces only an earlier `{self.command}` run; choose a new folder"
            )
        return self

    # the run ------------------------------------------------------------------------------------

    def open(self) -> RunFolder:
        """Lock the folder, start the manifest; with overwrite, write into a staging folder."""
        self.check()
        target = self.target
        target.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(target, command=self.command, label=self.label)
        try:
            self._lock.acquire()
        except LockedError as error:
            raise OutputError(str(error)) from None
        self._replacing = (target / MANIFEST).is_file() and not self.resuming
        if self._replacing:
            staging = target.parent / f"{target.name}.in-progress-{_stamp()}-{os.getpid()}"
            staging.mkdir()
            self.path = staging
        self.status = "running"
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write_manifest()
        if self._parent is None and _COMMANDS:
            _COMMANDS[-1].folders.append(self)
        return self

    def _swap_in(self) -> None:
        """Make the finished staging folder the target; delete the earlier run."""
        staging, target = self.path, self.target
        self._carry_users_files(target, staging)
        if _exchange(staging, target):
            old = staging
        else:  # two renames: the earlier run is aside for an instant, never lost
            old = target.parent / f".{target.name}.lisa-old-{_stamp()}-{os.getpid()}"
            os.rename(target, old)
            os.rename(staging, target)
        self.path = target
        if self._lock is not None:
            self._lock.held = False  # the lock file left with the earlier run's folder
        shutil.rmtree(old, ignore_errors=True)

    def _carry_users_files(self, old: Path, new: Path) -> None:
        """Move entries of the earlier folder that no run wrote (the user's own) into the new one."""
        try:
            earlier = json.loads((old / MANIFEST).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            earlier = []
        ours = {str(name).split("/")[0] for name in earlier} | {MANIFEST, LOCK}
        for entry in old.iterdir():
            if entry.name in ours or entry.name.startswith(".lisa-lock-"):
                continue
            if (new / entry.name).exists():
                logger.warning("%s: %s clashes with this run's output; left in place", old, entry)
                continue
            os.rename(entry, new / entry.name)

    def _set_aside(self) -> None:
        """A failed or interrupted replacement: keep its files under a visible name."""
        incomplete = self.target.parent / f"{self.target.name}.incomplete-{_stamp()}"
        try:
            os.rename(self.path, incomplete)
        except OSError:
            incomplete = self.path
        self.path = incomplete
        self.incomplete = incomplete

    def file(self, name: str) -> Path:
        """The path of ``name`` in the folder, recorded as written by this run."""
        if self.status != "running":
            raise RuntimeError(f"{self.path} is not open; use it inside `with folder:`")
        target = self.path / name
        if name not in self.written:
            top = Path(name).parts[0]
            if top not in self.written:
                self.written.append(top)
            self._write_manifest()
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file atomically and record it."""
        return atomic_write_text(self.file(name), text)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write a binary file atomically and record it."""
        return atomic_write_bytes(self.file(name), data)

    def write_json(self, name: str, value: Any) -> Path:
        """Write JSON (indent 2, non-JSON values as text) atomically and record it."""
        return self.write_text(name, json.dumps(value, indent=2, default=str) + "\n")

    def subfolder(self, name: str) -> RunFolder:
        """An open folder inside this one whose files are recorded here too."""
        child = RunFolder(self.file(name), command=self.command, label=self.label)
        child._parent = self
        child.path.mkdir(parents=True, exist_ok=True)
        child.status = "running"
        return child

    def close(self, status: str = "finished") -> None:
        """Mark the run finished (or interrupted, failed); swap a replacement in or set it aside."""
        if self.status != "running":
            return
        self.status = status
        if self._parent is not None:
            return
        if status == "finished":
            # Names listed before they were written (a checkpoint-N) and removed since (the
            # checkpoint rotation of --save-total-limit) are not part of the results.
            self.written = [name for name in self.written if (self.path / name).exists()]
        self._write_manifest()
        try:
            if self._replacing:
                self._swap_in() if status == "finished" else self._set_aside()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> RunFolder:
        return self if self.status == "running" else self.open()

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close("finished")
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed")

    def kept(self) -> list[Path]:
        """The files and folders this run wrote that exist now."""
        return [self.path / name for name in self.written if (self.path / name).exists()]

    def kept_message(self) -> str:
        """What an interrupted run kept, and that an earlier run it was replacing is untouched."""
        kept = self.kept()
        names = ", ".join(p.name for p in kept) if kept else "nothing yet"
        if self.incomplete is None:
            return f"kept in {self.path}: {names}"
        return (
            f"the earlier run in {self.target} is untouched; this run's files are in "
            f"{self.incomplete}: {names}"
        )

    def _write_manifest(self) -> None:
        if self._parent is not None:
            return
        manifest = {
            "format": "lisa-run",
            "command": self.command,
            "arguments": self.arguments,
            "status": self.status,
            "started": getattr(self, "started", None),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": self.written,
            "versions": library_versions(),
        }
        atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")
