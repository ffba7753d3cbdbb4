"""Output folders and files that never overwrite or mix with an earlier run's results.

A :class:`RunFolder` is checked before any work (``check``) and opened when the work starts
(``open``). It keeps a manifest, ``lisa-run.json``, listing the command, its arguments, its
status (``running``, ``finished``, ``interrupted``, ``failed``) and every file the run wrote, as
it writes them. A folder that is not empty is refused unless ``overwrite`` is set, and even then
only when it holds a manifest, i.e. an earlier run's results: those files are removed first, so
old and new results never mix, and no file of the user's own is ever touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diagnostics.files import atomic_write_bytes, atomic_write_text, library_versions

__all__ = ["MANIFEST", "OutputError", "RunFolder", "check_output_file", "interrupted_runs"]

MANIFEST = "lisa-run.json"

# The folders opened by this process and not yet closed, and those closed by an interruption:
# what an interrupted command kept.
_OPEN: list[RunFolder] = []
_INTERRUPTED: list[RunFolder] = []


class OutputError(ValueError):
    """An output path that cannot be used; the message names it and the fix."""


def interrupted_runs() -> list[RunFolder]:
    """Close every open RunFolder as interrupted; return them and those an interruption closed.

    The CLI calls this on Ctrl-C to say what the run kept; the list is then emptied.
    """
    for folder in list(_OPEN):
        folder.close("interrupted")
    found = list(_INTERRUPTED)
    _INTERRUPTED.clear()
    return found


def _writable_ancestor(path: Path, label: str) -> Path:
    """The nearest existing ancestor of ``path``; refuse a file on the way or no permission."""
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                where = "" if ancestor == path else f": {ancestor} is a file, not a folder"
                raise OutputError(f"{label} {path}{where or ' is a file'}; pass a folder path")
            break
    else:  # pragma: no cover - the root always exists
        ancestor = Path("/")
    try:  # a real probe: permission bits lie for root and for read-only mounts
        probe = tempfile.mkdtemp(prefix=".lisa-probe-", dir=ancestor)
    except OSError as error:
        raise OutputError(
            f"{label} {path}: cannot write in {ancestor} ({error.strerror}); choose a folder "
            "you can write to"
        ) from None
    os.rmdir(probe)
    return ancestor


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, label: str = "--out"):
    """Refuse an output file that exists (unless ``overwrite``) or cannot be written.

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
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{label} {target} is a folder; pass a file path")
    if target.exists() and not overwrite:
        raise OutputError(
            f"{label} {target} already exists; pass --overwrite to replace it or choose another file"
        )
    _writable_ancestor(target.parent, label)
    return target


class RunFolder:
    """The output folder of one run: checked first, a manifest of what it wrote, no mixing.

    Args:
        path: the folder (created when opened).
        command: what writes it, e.g. "lisa train" (recorded in the manifest).
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
        self.path = Path(path)
        self.command = command
        self.arguments = dict(arguments or {})
        self.overwrite = overwrite
        self.label = label
        self.written: list[str] = []
        self.status = "new"
        # True when this run continues the earlier one in the folder (a resumed study): open()
        # then keeps the earlier files instead of removing them.
        self.resuming = False
        self._parent: RunFolder | None = None

    # before any work ---------------------------------------------------------------------------

    def check(self) -> RunFolder:
        """Raise OutputError if the folder cannot hold this run; nothing is created."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"{self.label} {path} is a file; pass a folder path")
        _writable_ancestor(path, self.label)
        if path.is_dir():
            entries = sorted(p.name for p in path.iterdir())
            if entries:
                manifest = path / MANIFEST
                if not self.overwrite:
                    shown = ", ".join(e for e in entries if e != MANIFEST)[:120] or MANIFEST
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
        return self

    # the run ------------------------------------------------------------------------------------

    def open(self) -> RunFolder:
        """Create the folder, remove an earlier run's files (with overwrite), start the manifest."""
        self.check()
        if self.path.is_dir() and (self.path / MANIFEST).is_file() and not self.resuming:
            self._remove_earlier_run()
        self.path.mkdir(parents=True, exist_ok=True)
        self.status = "running"
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write_manifest()
        if self._parent is None:
            _OPEN.append(self)
        return self

    def _remove_earlier_run(self) -> None:
        try:
            earlier = json.loads((self.path / MANIFEST).read_text())
            names = [str(n) for n in earlier.get("files", [])]
        except (OSError, ValueError, AttributeError):
            names = []
        for name in [*names, MANIFEST]:
            target = (self.path / name).resolve()
            if self.path.resolve() not in target.parents:
                continue  # a manifest never names anything outside its folder; ignore if it does
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

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
        """Mark the run finished (or interrupted, failed) in the manifest."""
        if self.status != "running":
            return
        self.status = status
        if self._parent is None:
            self._write_manifest()
            if self in _OPEN:
                _OPEN.remove(self)
            if status == "interrupted":
                _INTERRUPTED.append(self)

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
