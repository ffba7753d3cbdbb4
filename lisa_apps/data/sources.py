"""Reading a user's data set (JSON/JSONL, Parquet, CSV, a saved folder, the hub) into memory-mapped examples.

Every source is read once, record by record, checked and turned into canonical examples
(:mod:`lisa_apps.data.formats`), and written by ``datasets`` to an Arrow file in its cache; the
result is memory-mapped, so a million-record set does not sit in RAM. A later load of the same
unchanged source reuses that file. JSON and JSONL are parsed here rather than by Arrow's reader
so that every error names the file and line (bad JSON, non-UTF-8 bytes, NaN), a UTF-8
byte-order mark is accepted, and a record's ``null`` input is allowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from lisa_apps.data.formats import FORMATS, detect_format, normalize_record
from lisa_apps.data.split import jsonl_split

__all__ = ["Examples", "read_examples"]

logger = logging.getLogger(__name__)

# Bump when the canonical form changes, so cached Arrow files written by older code are not reused.
_CANONICAL_VERSION = 1
_TABULAR = {".parquet": "parquet", ".csv": "csv"}
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "name" or "owner/name"


class Examples(Sequence):
    """A memory-mapped, read-only list of canonical examples (a ``datasets.Dataset`` underneath).

    Indexing gives an example dict; slicing gives another ``Examples`` (no copy); it compares
    equal to a list with the same examples.
    """

    def __init__(self, table):
        self.dataset = table  # datasets.Dataset with the canonical columns and "held_out"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Examples(self.dataset.select(range(len(self))[index]))
        return _example(self.dataset[index])

    def __iter__(self) -> Iterator[dict]:
        for batch in self.dataset.iter(batch_size=512):
            columns = list(batch)
            for values in zip(*(batch[column] for column in columns), strict=True):
                yield _example(dict(zip(columns, values, strict=True)))

    def __eq__(self, other) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Examples({len(self)} examples)"

    def select(self, indices) -> Examples:
        """The examples at ``indices`` (in that order)."""
        return Examples(self.dataset.select(indices))


def _example(row: dict) -> dict:
    row = {key: value for key, value in row.items() if key != "held_out"}
    if "system" in row and not row["system"]:
        del row["system"]
    return row


def read_examples(
    spec: str,
    *,
    data_format: str | None = None,
    columns: dict[str, str] | None = None,
    data_split: str | None = None,
) -> Examples:
    """Read every record of a source into canonical examples, each marked held out or not.

    Args:
        spec: a ``.json``/``.jsonl``/``.parquet``/``.csv`` file (suffix in any case), a folder
            written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``, or a hub
            dataset name (read from the local cache when offline).
        data_format: one of :data:`~lisa_apps.data.formats.FORMATS`; ``None`` detects it from
            the columns.
        columns: renames, canonical field -> the set's column (see
            :func:`~lisa_apps.data.formats.parse_columns`).
        data_split: the split of a DatasetDict folder or a hub set (default: its only split,
            else ``train``).

    Returns:
        :class:`Examples`, with a ``held_out`` column from :func:`jsonl_split`.

    Raises:
        ValueError: one line naming the file and line (or row) and the fix.
    """
    import datasets

    if data_format is not None and data_format not in FORMATS:
        raise ValueError(f"data format {data_format!r} is not one of {', '.join(FORMATS)}")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one line per problem, not a bar per small file
    try:
        source = _describe(spec, data_split)
        if data_format is None:
            data_format = detect_format(_first_columns(source), source["name"], columns)
        gen_kwargs = {
            "source": source,
            "data_format": data_format,
            "columns": dict(columns or {}),
            "version": _CANONICAL_VERSION,
        }
        table = datasets.Dataset.from_generator(
            _canonical_records, features=_features(data_format), gen_kwargs=gen_kwargs
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, ValueError):
            raise ValueError(str(cause)) from None
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    if len(table) == 0:
        raise ValueError(f"{source['name']}: no records found; the file or split is empty")
    return Examples(table)


def _features(data_format: str):
    from datasets import Features, Value

    string = Value("string")
    if data_format == "alpaca":
        names = ("instruction", "input", "output", "answer", "system")
        return Features({name: string for name in names} | {"held_out": Value("bool")})
    if data_format in ("messages", "sharegpt"):
        turn = {"role": string, "content": string}
        return Features({"messages": [turn], "answer": string, "held_out": Value("bool")})
    return Features({"text": string, "answer": string, "held_out": Value("bool")})


def _describe(spec: str, data_split: str | None) -> dict:
    """What to open: a kind, a path or name, and a stamp that changes when the source does."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_dir():
        files = sorted(path.glob("*.json")) + sorted(path.glob("*/*.json"))
        stamp = [(str(file), file.stat().st_mtime_ns) for file in files]
        return {"kind": "disk", "path": str(path), "name": str(path), "split": data_split,
                "stamp": stamp}  # fmt: skip
    if suffix in (".json", ".jsonl", *_TABULAR):
        if not path.is_file():
            raise ValueError(
                f"{spec}: no such file; --data takes 'math', an existing .json/.jsonl/.parquet/"
                ".csv file, a saved dataset folder or a hub dataset name"
            )
        stat = path.stat()
        kind = "json" if suffix in (".json", ".jsonl") else _TABULAR[suffix]
        return {"kind": kind, "path": str(path.resolve()), "name": str(path), "split": None,
                "stamp": [stat.st_size, stat.st_mtime_ns]}  # fmt: skip
    if suffix or not _HUB_NAME.fullmatch(spec):
        raise ValueError(
            f"{spec}: not 'math', an existing .json/.jsonl/.parquet/.csv file, a saved dataset "
            "folder or a hub dataset name"
        )
    return {"kind": "hub", "path": spec, "name": spec, "split": data_split, "stamp": None}


def _first_columns(source: dict) -> list[str]:
    if source["kind"] == "json":
        for where, record in _json_records(source["path"], source["name"]):
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            return list(record)
        raise ValueError(f"{source['name']}: no records found; the file is empty")
    return list(_open_table(source).column_names)


def _canonical_records(source: dict, data_format: str, columns: dict, version: int):
    """Yield the checked canonical form of every record (run by Dataset.from_generator)."""
    del version  # part of the cache key only
    if source["kind"] == "json":
        records = _json_records(source["path"], source["name"])
    else:
        table = _open_table(source)
        records = ((f"{source['name']} row {i + 1}", row) for i, row in enumerate(table))
    for where, record in records:
        example = normalize_record(record, data_format, where, columns)
        held_out = jsonl_split(example) == "test"
        if data_format == "alpaca":
            example.setdefault("system", None)
        yield example | {"held_out": held_out}


def _open_table(source: dict):
    """A raw ``datasets.Dataset`` for a Parquet/CSV file, a saved folder or a hub set."""
    import datasets

    kind, name = source["kind"], source["name"]
    if kind in ("parquet", "csv"):
        options = _csv_options(source["path"], name) if kind == "csv" else {}
        try:
            return datasets.load_dataset(
                kind, data_files=source["path"], split="train", **options
            )
        except Exception as error:  # pyarrow and pandas raise many types; all mean "unreadable"
            raise ValueError(f"{name}: cannot read it as {kind} ({_first_line(error)})") from None
    if kind == "disk":
        try:
            loaded = datasets.load_from_disk(source["path"])
        except FileNotFoundError:
            raise ValueError(
                f"{name}: a folder, but not one written by Dataset.save_to_disk (no "
                "dataset_info.json / dataset_dict.json)"
            ) from None
        return _pick_split(loaded, source["split"], name)
    if datasets.config.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1":
        how = "this machine is offline (HF_HUB_OFFLINE=1)"
    else:
        how = "it could not be loaded"
    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:  # the hub client raises many types; all mean "not available"
        raise ValueError(
            f"{name}: not a local file or folder, and {how} as a hub dataset from the local "
            f"cache ({_first_line(error)}); download it once where there is network "
            f"(datasets.load_dataset({name!r})) or pass a local file"
        ) from None
    return _pick_split(loaded, source["split"], name)


def _csv_options(path: str, name: str) -> dict:
    """Every CSV column read as text (an empty cell as ""), after a line-by-line UTF-8 check."""
    import csv

    from datasets import Features, Value

    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            _decode(raw, name, line_number, first=line_number == 1)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return {
        "features": Features({column: Value("string") for column in header}),
        "keep_default_na": False,
        "encoding": "utf-8-sig",
    }


def _pick_split(loaded, split: str | None, name: str):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise ValueError(f"{name}: holds one dataset without splits; drop --data-split")
        return loaded
    splits = list(loaded)
    if split is None:
        if len(splits) == 1:
            return loaded[splits[0]]
        if "train" in splits:
            return loaded["train"]
        raise ValueError(f"{name}: holds the splits {splits}; choose one with --data-split")
    if split not in loaded:
        raise ValueError(f"{name}: no split {split!r}; it holds {splits} (--data-split)")
    return loaded[split]


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


class _NonFiniteError(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFiniteError(name)


def _json_records(path: str, name: str) -> Iterator[tuple[str, object]]:
    """Yield (``name:line``, record) from a JSON-lines file or a JSON array, in file order."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        yield from _json_array(path, name)
        return
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            text = _decode(raw, name, line_number, first=line_number == 1)
            if text.strip():
                yield f"{name}:{line_number}", _loads(text, f"{name}:{line_number}")


def _json_array(path: str, name: str) -> Iterator[tuple[str, object]]:
    # A JSON array is read whole (JSON lines stream); each element still reports its line.
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(_not_utf8(name, line, raw[error.start])) from None
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    position = text.index("[") + 1
    line, counted_to = 1, 0
    while True:
        position = _skip_space(text, position)
        if position < len(text) and text[position] == "]":
            return
        line += text.count("\n", counted_to, position)
        counted_to = position
        where = f"{name}:{line}"
        try:
            record, position = decoder.raw_decode(text, position)
        except _NonFiniteError as error:
            raise ValueError(_nan_message(where, str(error))) from None
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno})"
            ) from None
        yield where, record
        position = _skip_space(text, position)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position >= len(text) or text[position] != "]":
            bad_line = text.count("\n", 0, position) + 1
            raise ValueError(f"{name}:{bad_line}: invalid JSON (expected ',' or ']' in the array)")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _decode(raw: bytes, name: str, line_number: int, *, first: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(_not_utf8(name, line_number, raw[error.start])) from None


def _not_utf8(name: str, line: int, byte: int) -> str:
    return (
        f"{name}:{line}: not UTF-8 text (byte 0x{byte:02x}); re-save the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )


def _loads(text: str, where: str):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except _NonFiniteError as error:
        raise ValueError(_nan_message(where, str(error))) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None


def _nan_message(where: str, constant: str) -> str:
    return f"{where}: {constant} is not valid JSON; write a finite number, null or a string"
