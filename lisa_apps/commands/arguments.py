"""Argument types and option groups shared by the commands: one check per kind of value.

Every type function raises ``argparse.ArgumentTypeError`` with the accepted range, so a bad
value is reported as ``lisa CMD: error: argument --steps: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= {minimum}, got {text!r}"
        ) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch sizes, counts)."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds, warm-up steps)."""
    return _integer(text, 0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (temperatures, floors, weight decay)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def csv_choices(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma list whose items are all among ``choices`` (no empty list, no repeats)."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(part.strip() for part in text.split(",") if part.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"give a comma list of {', '.join(choices)}")
        unknown = [item for item in items if item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unknown)} not among {', '.join(choices)}"
            )
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{text!r} repeats an item")
        return items

    return parse


def add_output(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--out (a folder this run owns) and --overwrite; also --config, a YAML recipe of the
    command's options (:mod:`lisa_apps.recipes`), which every command with an --out takes."""
    from lisa_apps.recipes import add_recipe_option

    add_recipe_option(parser)
    parser.add_argument(
        "--out",
        default=default,
        required=default is None,
        help=f"output folder for {what}"
        + (f" (default {default})" if default else "")
        + "; must be new or empty, or an earlier run's folder with --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (other files are never touched)",
    )


def add_runtime(parser: argparse.ArgumentParser, *, auto_precision: bool) -> None:
    """--device, --precision, --gradient-checkpointing and --threads."""
    from diagnostics.runtime import PRECISIONS

    group = parser.add_argument_group("where and how it computes")
    group.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when present, else cpu)",
    )
    precisions = ("auto", *PRECISIONS) if auto_precision else PRECISIONS
    group.add_argument(
        "--precision",
        choices=precisions,
        default=precisions[0],
        help="float32; bf16-mixed (bfloat16 autocast over float32 weights); bf16 (bfloat16 "
        "weights, grads and state)"
        + ("; auto = bf16-mixed on a CUDA device with bfloat16, else float32" if auto_precision else "")
        + f" (default {precisions[0]})",
    )
    group.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, ~30%% more time",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )


def add_distributed(parser: argparse.ArgumentParser, what: str) -> None:
    """--distributed ddp|fsdp2: one process per device, started by torchrun."""
    parser.add_argument(
        "--distributed",
        choices=("ddp", "fsdp2"),
        default=None,
        help=f"under torchrun: {what}; rank 0 alone writes --out (see docs/scaling.md)",
    )


def check_distributed(args: argparse.Namespace, command: str) -> int:
    """Refuse --distributed outside torchrun, and torchrun without it; returns the world size."""
    from lisa_apps.training.distributed import launched_world_size

    world = launched_world_size()
    mode = getattr(args, "distributed", None)
    if mode is None:
        if world is not None and world > 1:
            raise ValueError(
                f"this is one of {world} processes started by torchrun but --distributed is not "
                f"given, so each would train alone and write --out; pass --distributed fsdp2 or "
                "ddp, or run without torchrun"
            )
        return 1
    if world is None:
        raise ValueError(
            f"--distributed {mode} needs one process per device started by torchrun: torchrun "
            f'--nproc_per_node N "$(command -v lisa)" {command} --distributed {mode} ... (or '
            "drop --distributed)"
        )
    if args.device is not None and ":" in str(args.device):
        raise ValueError(
            f"--device {args.device}: under --distributed each rank uses the CUDA device of its "
            "LOCAL_RANK; pass --device cuda or leave it out"
        )
    if args.batch_size % world:
        raise ValueError(
            f"--batch-size {args.batch_size} is the global batch, split over the {world} ranks; "
            f"use a multiple of {world}"
        )
    return world


def claim_output(args: argparse.Namespace, command: str):
    """Check --out and claim it on rank 0; returns (is rank 0, its RunFolder or None).

    Under torchrun rank 0 alone owns --out; the other ranks never look at it.
    """
    import os

    from lisa_apps.outputs import RunFolder

    main_rank = getattr(args, "distributed", None) is None or os.environ.get("RANK") == "0"
    if not main_rank:
        return False, None
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    folder = RunFolder(args.out, command=command, arguments=arguments, overwrite=args.overwrite)
    return True, folder.check()


def apply_runtime(args: argparse.Namespace):
    """Check --device (and --precision against it), set --threads; returns the torch.device."""
    import torch

    from diagnostics.runtime import check_precision, resolve_device

    device = resolve_device(args.device)
    if getattr(args, "precision", "auto") != "auto":
        check_precision(args.precision, device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return device


def check_gamma(gamma: int, num_blocks: int, model: str, flag: str = "--gamma") -> None:
    """Refuse more blocks per period than the model has (and a model without blocks)."""
    if num_blocks < 1:
        raise ValueError(
            f"{model} has no blocks that LISA could sample, so {flag} {gamma} cannot be met; "
            "use a model with transformer blocks (lisa layers MODEL shows what was found)"
        )
    if gamma > num_blocks:
        raise ValueError(
            f"{flag} {gamma} is more than the {num_blocks} blocks of {model}; use {flag} "
            f"1..{num_blocks}"
        )


def check_policy_path(path: str, flag: str = "--policy") -> str:
    """Refuse a --policy that is not a file: a folder (naming its policy.json) or a missing path."""
    from pathlib import Path

    given = Path(path)
    if given.is_dir():
        inside = given / "policy.json"
        fix = (
            f"pass {flag} {inside}"
            if inside.is_file()
            else "pass the policy.json that lisa diagnose or lisa policy wrote"
        )
        raise ValueError(f"{flag} {path} is a folder, not a policy file; {fix}")
    if not given.is_file():
        raise FileNotFoundError(
            f"{flag} {path} does not exist; pass the policy.json that lisa diagnose or lisa "
            "policy wrote"
        )
    return path


# lisa_apps.data.FORMATS, written out so that building the parser does not import torch
# (tests/lisa_apps/test_data_formats.py checks they agree).
DATA_FORMATS = ("alpaca", "messages", "sharegpt", "text")


def add_data_options(
    parser: argparse.ArgumentParser, *, held_out: bool = True, tokenization: bool = False
) -> None:
    """--data-format, --data-split, --data-columns; --eval-data; --drop-long and --packing.

    The words follow axolotl and LLaMA-Factory (docs/data.md shows each format).
    """
    group = parser.add_argument_group("the data set's layout (see docs/data.md)")
    group.add_argument(
        "--data-format",
        choices=DATA_FORMATS,
        default=None,
        help="how --data's records are laid out (default: detected from the columns)",
    )
    group.add_argument(
        "--data-split",
        default=None,
        help="the split of a saved DatasetDict folder or a hub set (default: its only split, "
        "else train)",
    )
    group.add_argument(
        "--data-columns",
        default=None,
        metavar="FIELD=COLUMN,...",
        help="read a field from a differently named column, e.g. "
        "instruction=question,output=solution (fields: instruction, input, output, system, "
        "answer, messages, text)",
    )
    if held_out:
        group.add_argument(
            "--eval-data",
            default=None,
            help="a separate held-out set (same layout options); then no records of --data "
            "are held out",
        )
    if tokenization:
        group.add_argument(
            "--drop-long",
            action="store_true",
            help="drop examples longer than --max-length (default: cut their end)",
        )
        group.add_argument(
            "--packing",
            action="store_true",
            help="join short training examples into rows of up to --max-length tokens; each "
            "example attends only to itself",
        )


def data_options(args: argparse.Namespace) -> dict:
    """The loader options a command's --data-* flags ask for (see add_data_options)."""
    from lisa_apps.data.formats import parse_columns

    options = {
        "data_format": getattr(args, "data_format", None),
        "columns": None,
        "data_split": getattr(args, "data_split", None),
        "eval_data": getattr(args, "eval_data", None),
    }
    if getattr(args, "data_columns", None) is not None:
        try:
            options["columns"] = parse_columns(args.data_columns)
        except ValueError as error:
            raise ValueError(f"--data-columns {args.data_columns}: {error}") from None
    return options


def load_data(
    spec: str, *, split: str, num_examples: int | None, seed: int, args=None
) -> list[dict]:
    """Examples for --data: 'math' or a data set (errors name the file and line).

    ``args`` supplies the --data-* options of :func:`add_data_options`.
    """
    from lisa_apps.data import load_examples

    options = data_options(args) if args is not None else {}
    given = [
        f"--{name.replace('_', '-')}" if name != "columns" else "--data-columns"
        for name, value in options.items()
        if value
    ]
    if spec == "math" and given:
        raise ValueError(
            f"{', '.join(given)} describe a data set file; --data math is generated (drop them, "
            "or pass --data FILE)"
        )
    flag, source = "--data", spec
    if options.get("eval_data") and split == "test":
        flag, source = "--eval-data", options["eval_data"]
    try:
        return load_examples(spec, split=split, num_examples=num_examples, seed=seed, **options)
    except FileNotFoundError as error:
        raise ValueError(f"{flag} {source}: {error.strerror or error}") from None
    except ValueError as error:
        # The loader's messages mostly begin with the file (and line); do not name it twice.
        named = str(error).startswith(str(source))
        raise ValueError(f"{flag} {error}" if named else f"{flag} {source}: {error}") from None
