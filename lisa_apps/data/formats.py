"""Record formats of fine-tuning sets (alpaca, messages, sharegpt, text): detection and one canonical form.

Every record is turned into one of three canonical examples, whatever the file's layout:

- alpaca: ``{"instruction", "input", "output", "answer"}`` (plus ``"system"`` when the record
  has one), the form the maths generator also makes;
- messages and sharegpt: ``{"messages": [{"role", "content"}, ...], "answer": None}`` with
  roles ``system``, ``user`` and ``assistant``;
- text: ``{"text", "answer": None}`` (continued pre-training: loss on every token).

Names follow axolotl and LLaMA-Factory, so a dataset entry written for them reads the same here.
"""

from __future__ import annotations

import math

from lisa_apps.data.answers import extract_answer, normalize_number

__all__ = [
    "COLUMN_ROLES",
    "FORMATS",
    "detect_format",
    "normalize_record",
    "parse_columns",
]

FORMATS = ("alpaca", "messages", "sharegpt", "text")

# Accepted spellings per alpaca field, canonical name first. "answer" alone (GSM8K's layout)
# serves as the output; next to an explicit output it is the short final answer.
_ALPACA_ALIASES = {
    "instruction": ("instruction", "prompt", "question"),
    "input": ("input", "context"),
    "output": ("output", "response", "completion"),
}

# What --data-columns may rename: the canonical column each format reads.
COLUMN_ROLES = ("instruction", "input", "output", "system", "answer", "messages", "text")
# LLaMA-Factory's names for the same fields (its dataset_info.json "columns"), accepted too.
_COLUMN_SYNONYMS = {"prompt": "instruction", "query": "input", "response": "output",
                    "conversations": "messages"}  # fmt: skip

# ShareGPT speakers (and the role names some ShareGPT exports already use) -> chat roles.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_MESSAGE_ROLES = ("system", "user", "assistant")


def parse_columns(text: str | None) -> dict[str, str]:
    """Read ``"instruction=question,output=answer"`` into ``{"instruction": "question", ...}``.

    The left side is the field this loader reads (one of :data:`COLUMN_ROLES`; ``messages``
    also stands for sharegpt's ``conversations``), the right side the column in the user's set,
    as LLaMA-Factory's ``columns:`` entry maps them; its field names ``prompt``, ``query``,
    ``response`` and ``conversations`` are accepted for instruction, input, output, messages.

    Args:
        text: the comma list, or ``None``.

    Returns:
        The mapping (empty for ``None``).

    Raises:
        ValueError: an item without ``=``, an unknown field, or a field named twice.

    Example:
        >>> parse_columns("instruction=question, output=solution")
        {'instruction': 'question', 'output': 'solution'}
        >>> parse_columns("prompt=q,response=a")
        {'instruction': 'q', 'output': 'a'}
    """
    if text is None:
        return {}
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        field, sep, column = (side.strip() for side in item.partition("="))
        if not sep or not field or not column:
            raise ValueError(f"{item!r} is not FIELD=COLUMN (e.g. instruction=question)")
        field = _COLUMN_SYNONYMS.get(field, field)
        if field not in COLUMN_ROLES:
            raise ValueError(f"{field!r} is not a field; use one of {', '.join(COLUMN_ROLES)}")
        if field in mapping:
            raise ValueError(f"field {field!r} is mapped twice")
        mapping[field] = column
    if not mapping:
        raise ValueError("no FIELD=COLUMN pairs given (e.g. instruction=question,output=answer)")
    return mapping


def detect_format(columns, where: str, mapping: dict[str, str] | None = None) -> str:
    """Name the format of a set from its column names.

    ``messages`` (a list of role/content dicts) -> messages; ``conversations`` -> sharegpt;
    ``text`` alone -> text; an instruction-like and an output-like column -> alpaca.

    Args:
        columns: the column names (a record's keys, or a table's columns).
        where: the file (and line) for the error message.
        mapping: ``--data-columns`` renames, applied first.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        ValueError: naming the columns found and how to say the format.
    """
    names = set(columns)
    renamed = {field for field, column in (mapping or {}).items() if column in names}
    present = names | renamed
    if "messages" in renamed or "messages" in names:
        return "messages"
    if "conversations" in names:
        return "sharegpt"
    has_instruction = any(alias in present for alias in _ALPACA_ALIASES["instruction"])
    has_output = any(
        alias in present for alias in (*_ALPACA_ALIASES["output"], "answer")
    )
    if has_instruction and has_output:
        return "alpaca"
    if "text" in present:
        return "text"
    raise ValueError(
        f"{where}: cannot tell the data format from the columns {sorted(names)}; expected "
        "instruction/output (alpaca), messages, conversations (sharegpt) or text; pass "
        "--data-format, or --data-columns to name yours (e.g. instruction=question,output=answer)"
    )


def normalize_record(record, data_format: str, where: str, mapping: dict[str, str] | None = None) -> dict:
    """Check one raw record and return its canonical example (see the module docstring).

    Args:
        record: the raw record (a dict).
        data_format: one of :data:`FORMATS`.
        where: ``file:line`` or ``file row N``, to prefix errors.
        mapping: ``--data-columns`` renames (canonical field -> the set's column).

    Returns:
        The canonical example.

    Raises:
        ValueError: naming ``where`` and the problem.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if mapping:
        record = _renamed(record, mapping, where, data_format)
    if data_format == "alpaca":
        return _alpaca(record, where)
    if data_format in ("messages", "sharegpt"):
        return {"messages": _conversation(record, data_format, where), "answer": None}
    if data_format == "text":
        if "text" not in record:
            raise ValueError(f"{where}: missing field 'text'; found {sorted(record)}")
        text = _string(record, "text", where)
        if not text.strip():
            raise ValueError(f"{where}: field 'text' is empty")
        return {"text": text, "answer": None}
    raise ValueError(f"data format {data_format!r} is not one of {', '.join(FORMATS)}")


def _renamed(record: dict, mapping: dict[str, str], where: str, data_format: str) -> dict:
    renamed = dict(record)
    for field, column in mapping.items():
        if column not in record:
            raise ValueError(
                f"{where}: --data-columns maps {field}={column} but the record has no "
                f"{column!r}; found {sorted(record)}"
            )
        value = renamed.pop(column)
        if field == "messages" and data_format == "sharegpt":
            field = "conversations"  # sharegpt's turns live under that name
        renamed[field] = value
    return renamed


def _alpaca(record: dict, where: str) -> dict:
    fields: dict[str, str] = {}
    for field, aliases in _ALPACA_ALIASES.items():
        present = [alias for alias in aliases if alias in record]
        if len(present) > 1:
            raise ValueError(f"{where}: fields {present} all mean {field!r}; keep one")
        if present:
            fields[field] = _string(record, present[0], where)
    answer = _string(record, "answer", where) if record.get("answer") is not None else None
    if "output" not in fields and answer is not None:
        fields["output"], answer = answer, None  # GSM8K layout: the answer is the solution
    for field in ("instruction", "output"):
        if field not in fields:
            raise ValueError(
                f"{where}: missing field {field!r} (accepted names: {_ALPACA_ALIASES[field]}); "
                f"found {sorted(record)}"
            )
        if not fields[field].strip():
            raise ValueError(f"{where}: field {field!r} is empty")
    output = fields["output"]
    final = normalize_number(answer) if answer is not None else extract_answer(output)
    if answer is not None and final is None:
        final = answer.strip()  # a non-numeric answer still scores by exact match
    example = {
        "instruction": fields["instruction"],
        "input": fields.get("input", ""),
        "output": output,
        "answer": final,
    }
    system = _string(record, "system", where) if record.get("system") is not None else ""
    if system.strip():
        example["system"] = system
    return example


def _string(record: dict, name: str, where: str) -> str:
    value = record[name]
    if name in _ALPACA_ALIASES["input"] and value is None:
        return ""  # an optional input written as null means no input
    # Numbers are fine as answers ("answer": 42); elsewhere a non-string is a mistake.
    if name == "answer" and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where}: field 'answer' is {value}; write a finite number")
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _conversation(record: dict, data_format: str, where: str) -> list[dict]:
    key = "messages" if data_format == "messages" else "conversations"
    role_key, content_key = ("role", "content") if key == "messages" else ("from", "value")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r} ({data_format} format); found {sorted(record)}")
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: field {key!r} must be a non-empty list of turns")
    messages = []
    for number, turn in enumerate(turns, start=1):
        if isinstance(turn, dict) and key == "messages" and {"from", "value"} <= set(turn):
            raise ValueError(
                f"{where}: turn {number} has 'from' and 'value', sharegpt's names; pass "
                "--data-format sharegpt"
            )
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise ValueError(
                f"{where}: turn {number} of {key!r} must be an object with {role_key!r} and "
                f"{content_key!r}"
            )
        speaker, content = turn[role_key], turn[content_key]
        role = _SHAREGPT_ROLES.get(speaker) if key == "conversations" else speaker
        allowed = _MESSAGE_ROLES if key == "messages" else tuple(_SHAREGPT_ROLES)
        if role not in _MESSAGE_ROLES:
            raise ValueError(
                f"{where}: turn {number} has {role_key}={speaker!r}; use one of {', '.join(allowed)}"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"{where}: turn {number} {content_key!r} must be a string, got "
                f"{type(content).__name__}"
            )
        messages.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError(
            f"{where}: the conversation has no assistant turn, so nothing to learn; add one "
            f"({'gpt' if key == 'conversations' else 'assistant'}) or drop the record"
        )
    return messages
