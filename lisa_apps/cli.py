"""The `lisa` command line: a thin dispatcher over lisa_apps.commands.

Each subcommand is a module with ``configure(parser)`` (its arguments) and ``prepare(args)``,
which checks every input and returns the work to do. The dispatcher runs them in that order:

- a bad input (argparse's or prepare's ValueError, FileNotFoundError, ModuleNotFoundError) is
  refused with one line on stderr, ``lisa COMMAND: error: ...``, and exit status 2, before any
  model is loaded or any file written (under torchrun every rank refuses, rank 0 alone prints);
- Ctrl-C during the work prints one line saying what the run kept, and exits with 130;
- any other failure during the work is a bug or an environment problem and shows its traceback.

Subcommand modules are imported only when chosen, so ``lisa --version`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

# name -> (module under lisa_apps.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "demo",
        "the main job: diagnose a model, derive a policy, fine-tune with LISA, report",
    ),
    "layers": ("layers", "print a model's layer map: groups, parameter counts, tying"),
    "estimate": (
        "estimate",
        "a run's memory for FT, LoRA, LISA and BAdam from the config alone (no weights)",
    ),
    "diagnose": (
        "diagnose",
        "run LoRA and FT probes: norms table, skew summary, sampling policy and plots",
    ),
    "policy": ("policy", "derive a sampling policy (JSON) from a saved norms table"),
    "plot": ("plot", "redraw diagnostics plots from saved norms, policy and history files"),
    "train": (
        "train",
        "fine-tune with LISA, LoRA or FT; held-out loss and accuracy before and after",
    ),
    "study": (
        "study",
        "compare FT, LoRA and LISA variants over seeds and tuned rates, with intervals",
    ),
}

# How long a rank other than 0 waits after refusing, for rank 0 to print the reason and exit.
OTHER_RANKS_WAIT_S = 60.0

INPUT_ERRORS = (ValueError, FileNotFoundError, ModuleNotFoundError, IsADirectoryError)


class UsageError(Exception):
    """A bad command-line input; its message names the input and the fix."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lisa train: error: argument --steps: ...``."""

    def error(self, message: str):  # argparse calls this for every parsing mistake
        raise UsageError(f"{message} (see {self.prog} --help)")


def _version() -> str:
    # importlib.metadata instead of `import lisa`: the package imports torch.
    try:
        return version("lisa-finetune")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> Parser:
    parser = Parser(prog="lisa", description="LISA fine-tuning and layer-norm diagnostics.")
    parser.add_argument("--version", action="version", version=f"lisa-finetune {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__}: {text}"
    return text


def _kept(runs) -> str:
    parts = [folder.kept_message() for folder in runs.interrupted()]
    return "; ".join(parts) if parts else "no files were written"


def _reports_refusals() -> bool:
    """Under torchrun every rank checks the same inputs; rank 0 alone says why it refuses."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    # peft still reads transformers' renamed `is_gradient_checkpointing`; nothing for a user to do.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    prog = f"lisa {command}" if command in COMMANDS else "lisa"
    try:
        if command in COMMANDS:
            # Only the chosen command's module is imported to declare its arguments.
            module = importlib.import_module(f"lisa_apps.commands.{COMMANDS[command][0]}")
            subparsers = next(
                a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            )
            module.configure(subparsers.choices[command])
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        work: Callable[[], int] = module.prepare(args)
    except (UsageError, *INPUT_ERRORS) as error:
        if _reports_refusals():
            print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        else:
            # Rank 0 refuses the same inputs and says why; torchrun stops every rank once one
            # exits, so the others wait for it rather than race it (and are stopped by then).
            time.sleep(OTHER_RANKS_WAIT_S)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before any work; nothing was written", file=sys.stderr)
        return 130
    from lisa_apps.outputs import CommandRuns, OutputError

    runs = CommandRuns()
    try:
        with runs:
            return int(work() or 0)
    except OutputError as error:  # e.g. another process took --out between the check and now
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {_kept(runs)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lisa ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
