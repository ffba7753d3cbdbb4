"""One writer per output folder: a lock file naming its holder, taken over when the holder died.

The lock is a file, ``.lisa-lock``, inside the folder, holding the writer's pid, host, command
and start time as JSON. It is created complete or not at all (written to a temporary file, then
hard-linked to its name, which fails if the name exists), so a reader never sees half a lock.
A lock whose holder is a process on this host that no longer runs (killed, crashed) is stale:
the next writer takes it over and logs that it did. A lock from another host cannot be checked
and is respected; the message says how to remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LOCK", "FolderLock", "LockedError", "lock_holder"]

LOCK = ".lisa-lock"

logger = logging.getLogger(__name__)


class LockedError(ValueError):
    """The folder is being written by another live process; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The live holder of ``folder``'s lock (pid, host, command, since), or None.

    None when there is no lock or its holder is a dead process on this host (a stale lock).
    """
    path = Path(folder) / LOCK
    if not path.is_file():
        return None
    data = _read(path) or {}
    if _is_stale(data):
        return None
    return data


def _is_stale(data: dict) -> bool:
    pid = data.get("pid")
    if data.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return not _alive(pid)


def describe(folder: Path, holder: dict, label: str) -> str:
    """One line: who writes ``folder`` and what to do."""
    where = f"pid {holder.get('pid')} on {holder.get('host')}"
    command = holder.get("command")
    doing = f" ({command}, since {holder.get('since')})" if command else ""
    remote = holder.get("host") != socket.gethostname()
    fix = (
        f"wait for it to finish, or delete {folder / LOCK} if that process is gone"
        if remote
        else "wait for it to finish or choose another folder"
    )
    return f"{label} {folder} is being written by {where}{doing}; {fix}"


class FolderLock:
    """The lock of one folder, held by this process between ``acquire`` and ``release``.

    Args:
        folder: the folder (must exist when acquired).
        command: what holds it, e.g. "lisa train" (recorded for the message others see).
        label: how messages name the folder, e.g. "--out".

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> lock = FolderLock(folder, command="example").acquire()
        >>> FolderLock(folder, command="other").acquire()
        Traceback (most recent call last):
        ...
        lisa_apps.folder_lock.LockedError: --out ... is being written by pid ...
        >>> lock.release()
        >>> (folder / LOCK).exists()
        False
    """

    def __init__(self, folder: str | os.PathLike, *, command: str, label: str = "--out"):
        self.folder = Path(folder)
        self.command = command
        self.label = label
        self.held = False
        self._token = f"{os.getpid()}-{id(self)}"

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    def acquire(self) -> FolderLock:
        """Take the lock, or raise LockedError naming the live holder."""
        content = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": self._token,
        }
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".lisa-lock-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(content, file)
            for _attempt in range(2):
                try:
                    os.link(temporary, self.path)  # atomic; fails when a lock exists
                    self.held = True
                    return self
                except FileExistsError:
                    holder = _read(self.path)
                    if holder is None or not _is_stale(holder):
                        raise LockedError(
                            describe(self.folder, holder or {"pid": "?", "host": "?"}, self.label)
                        ) from None
                    logger.warning(
                        "%s: took over the lock of pid %s (%s), which no longer runs",
                        self.folder,
                        holder.get("pid"),
                        holder.get("command"),
                    )
                    self.path.unlink(missing_ok=True)
            raise LockedError(describe(self.folder, _read(self.path) or {}, self.label))
        finally:
            Path(temporary).unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process still holds it (a taken-over lock is left alone)."""
        if not self.held:
            return
        self.held = False
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
