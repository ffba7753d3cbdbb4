"""The `lisa` command line: a thin dispatcher over diagnostics.commands.

The CLI lives in `diagnostics` because it composes both packages (`lisa train` plots with
diagnostics) and `lisa` must never import `diagnostics`. Subcommand modules are imported
only when chosen, so `lisa --version` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, version

# name -> (module under diagnostics.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "demo",
        "the main job: diagnose a model, derive a policy, fine-tune with LISA, report",
    ),
    "layers": ("layers", "print a model's layer map: groups, parameter counts, tying"),
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
}


def _version() -> str:
    # importlib.metadata instead of `import lisa`: the package imports torch.
    try:
        return version("lisa-finetune")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lisa", description="LISA fine-tuning and layer-norm diagnostics."
    )
    parser.add_argument("--version", action="version", version=f"lisa-finetune {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        # Arguments are declared by the module; importing it here is cheap only for the
        # chosen command, so parsers for the others are configured lazily below.
        sub.set_defaults(_configured=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the command, then let its module declare its arguments.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        module = importlib.import_module(f"diagnostics.commands.{COMMANDS[command][0]}")
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.configure(subparsers.choices[command])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(f"diagnostics.commands.{COMMANDS[args.command][0]}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
