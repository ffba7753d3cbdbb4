"""Estimate rows as a readable table, as JSON, and as suggestion lines."""

from __future__ import annotations

import json
from collections.abc import Sequence

from lisa_apps.estimate.plan import Suggestion

__all__ = ["format_bytes", "format_suggestion", "format_table", "rows_json"]

_GIB = 2**30
_MIB = 2**20

_COLUMNS = (
    ("method", "<"),
    ("precision", "<"),
    ("trainable", ">"),
    ("weights", ">"),
    ("grads", ">"),
    ("optimizer", ">"),
    ("master", ">"),
    ("exact total", ">"),
    ("activations*", ">"),
    ("total*", ">"),
    ("E+H+extras", ">"),
)


def format_bytes(count: int, unit: int = _GIB) -> str:
    """``count`` bytes in GiB (or MiB), two decimals.

    Example:
        >>> format_bytes(3 * 2**29)
        '1.50 GiB'
    """
    name = "GiB" if unit == _GIB else "MiB"
    return f"{count / unit:.2f} {name}"


def _count(number: int) -> str:
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if number >= size:
            return f"{number / size:.2f}{suffix}"
    return str(number)


def format_table(rows: Sequence[dict], *, offload: bool = False) -> str:
    """The rows as an aligned table, one unit for every byte column, with a header and notes.

    Example:
        >>> from lisa_apps.estimate.plan import estimate
        >>> from lisa_apps.estimate.accounting import Setup
        >>> from lisa_apps.tiny import tiny_config
        >>> rows = estimate(tiny_config("tiny-llama"), [Setup("ft", "float32")],
        ...                 model_name="tiny-llama")
        >>> table = format_table(rows).splitlines()
        >>> print(table[0])
        tiny-llama: 188,992 parameters, 4 blocks, untied E/H; batch 1 x 512 tokens
        >>> table[2].split()[:5]
        ['FT', 'float32', '188.99K', '0.72', 'MiB']
    """
    if not rows:
        return "no rows"
    unit = _GIB if max(row["total_with_activations_bytes"] for row in rows) >= _GIB else _MIB
    first = rows[0]
    tying = "tied E/H" if first["tied"] else "untied E/H"
    model_parameters = min(row["num_parameters"] for row in rows)
    lines = [
        f"{first['model']}: {model_parameters:,} parameters, {first['num_blocks']} blocks, "
        f"{tying}; batch {first['batch_size']} x {first['seq_len']} tokens"
        + (", activation checkpointing" if first["gradient_checkpointing"] else "")
        + (
            f"; FSDP2 over {first['fsdp_ranks']} ranks, bytes of one rank"
            if first["fsdp_ranks"] > 1
            else ""
        )
    ]
    cells = [
        [
            row["label"],
            row["precision"],
            _count(row["trainable_parameters"]),
            format_bytes(row["parameter_bytes"], unit),
            format_bytes(row["grad_bytes"], unit),
            format_bytes(row["optimizer_state_bytes"], unit),
            format_bytes(row["master_weight_bytes"], unit),
            format_bytes(row["total_bytes"], unit),
            format_bytes(row["activation_bytes_estimate"], unit),
            format_bytes(row["total_with_activations_bytes"], unit),
            "-"
            if row["embed_head_extras_share"] is None
            else f"{100 * row['embed_head_extras_share']:.1f}%",
        ]
        for row in rows
    ]
    widths = [
        max(len(title), *(len(line[i]) for line in cells)) for i, (title, _) in enumerate(_COLUMNS)
    ]

    def render(values: Sequence[str]) -> str:
        return "  ".join(
            f"{value:{align}{width}}"
            for value, (_, align), width in zip(values, _COLUMNS, widths, strict=True)
        ).rstrip()

    lines.append(render([title for title, _ in _COLUMNS]))
    lines.extend(render(line) for line in cells)
    lines.extend(_load_lines(rows, unit))
    if first["fsdp_ranks"] > 1:
        lines.extend(_checkpoint_lines(rows, unit))
    if offload:
        lines.extend(_offload_lines(rows, unit))
    lines.append(
        "weights, grads, optimizer state (AdamW: 2 moments + a 4-byte step per tensor) and master "
        "copies are exact; * activations are an estimate (formula and what it leaves out: "
        "docs/memory.md)"
    )
    return "\n".join(lines)


def _load_lines(rows: Sequence[dict], unit: int) -> list[str]:
    """One line per precision: a rank's peak CPU memory while loading, both ways."""
    lines = []
    for precision in dict.fromkeys(row["precision"] for row in rows):
        row = next(r for r in rows if r["precision"] == precision)
        line = (
            f"loading ({precision}, CPU memory of one rank, bf16 checkpoint): full copy "
            f"{format_bytes(row['load_full_copy_bytes'], unit)}"
        )
        sharded = [r for r in rows if r["precision"] == precision and r["load_sharded_bytes"]]
        if sharded:
            line += (
                f"; shard by shard {format_bytes(sharded[0]['load_sharded_bytes'], unit)} "
                "(FT/LISA under FSDP2 from a safetensors folder)"
            )
        lines.append(line)
    return lines


def _checkpoint_lines(rows: Sequence[dict], unit: int) -> list[str]:
    """One line per row under FSDP2: what a rank writes and gathers while checkpointing."""
    lines = []
    for row in rows:
        ranks, gathered = row["fsdp_ranks"], format_bytes(row["export_gathered_bytes"], unit)
        if row["method"] == "lora":
            export = f"rank 0 gathers the whole model into CPU memory ({gathered}) and writes"
        else:
            export = f"one unit gathered at a time ({gathered} per rank), rank 0 writes"
        lines.append(
            f"checkpointing, {row['label']} ({row['precision']}): each rank writes its weights "
            f"and AdamW state, {format_bytes(row['checkpoint_bytes'], unit)} (x {ranks} ranks), "
            f"gathering nothing; export model/: {export} "
            f"{format_bytes(row['export_bytes'], unit)}"
        )
    return lines


def _offload_lines(rows: Sequence[dict], unit: int) -> list[str]:
    """One line per row: what stays on the device under FSDP2's CPU offload (--offload)."""
    lines = []
    for row in rows:
        device = row["activation_bytes_estimate"] + row["largest_unit_bytes"]
        lines.append(
            f"--offload, {row['label']} ({row['precision']}): weights, grads and optimizer state "
            f"({format_bytes(row['total_bytes'], unit)}) in CPU memory; on the device "
            f"activations* {format_bytes(row['activation_bytes_estimate'], unit)} + one unit "
            f"gathered {format_bytes(row['largest_unit_bytes'], unit)} = "
            f"{format_bytes(device, unit)}"
        )
    return lines


def format_suggestion(suggestion: Suggestion) -> str:
    """One line: how much LISA exceeds LoRA, and what each cheaper LISA setting saves.

    Example:
        >>> from lisa_apps.estimate.plan import estimate, suggestions
        >>> from lisa_apps.estimate.accounting import Setup
        >>> from lisa_apps.tiny import tiny_config
        >>> config = tiny_config("tiny-llama")
        >>> rows = estimate(config, [Setup("lora", "float32"), Setup("lisa", "float32")])
        >>> format_suggestion(suggestions(config, rows)[0]).startswith("suggestion (float32)")
        True
    """
    lisa, lora = suggestion.lisa, suggestion.lora
    limit = lora["total_with_activations_bytes"]
    excess = lisa["total_with_activations_bytes"] - limit
    unit = _GIB if limit >= _GIB else _MIB
    parts = []
    for what, row in suggestion.options:
        saved = lisa["total_with_activations_bytes"] - row["total_with_activations_bytes"]
        fits = (
            "fits under LoRA"
            if row["total_with_activations_bytes"] <= limit
            else "still above LoRA"
        )
        parts.append(
            f"{what} saves {format_bytes(saved, unit)} "
            f"({100 * saved / lisa['total_with_activations_bytes']:.1f}%; {fits})"
        )
    return (
        f"suggestion ({lisa['precision']}): {lisa['label']} needs {format_bytes(excess, unit)} "
        f"({100 * excess / limit:.1f}%) more than {lora['label']}; " + "; ".join(parts)
    )


def rows_json(rows: Sequence[dict]) -> str:
    """The rows as a JSON list (every byte count an exact integer; activations an estimate).

    Example:
        >>> json.loads(rows_json([{"method": "ft", "gamma": None}]))
        [{'method': 'ft', 'gamma': None}]
    """
    return json.dumps(list(rows), indent=2)
