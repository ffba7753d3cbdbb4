"""`lisa plot`: redraw the diagnostics plots from saved norms, policy and history files."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from lisa_apps.commands.arguments import add_output, check_policy_path


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa plot`."""
    from diagnostics.norms import NORM_KINDS, REDUCTIONS

    parser.add_argument("--norms", default=None, help="norms.csv (Figure-2 plot and heatmap)")
    parser.add_argument("--policy", default=None, help="policy.json (policy vs uniform)")
    parser.add_argument(
        "--history",
        default=None,
        help="active sets of a LISA run, .json ([[step, [blocks]], ...] or active_sets.json "
        "of lisa train) or .csv (columns step,block or step,active_blocks); needs --policy",
    )
    parser.add_argument(
        "--kind", choices=NORM_KINDS, default="weight", help="norm kind to plot (default weight)"
    )
    parser.add_argument(
        "--reduce", choices=REDUCTIONS, default="l2", help="reduction to plot (default l2)"
    )
    add_output(parser, "plots", "the plots")


def _read_history(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"--history {path} does not exist")
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"--history {path} cannot be read: {error}") from None


def _check_draws(rows, policy, args: argparse.Namespace) -> None:
    """Each draw must be one the policy could make: gamma distinct blocks among its blocks."""
    for step, blocks in rows:
        repeated = sorted({b for b in blocks if blocks.count(b) > 1})
        if repeated:
            raise ValueError(
                f"the draw at step {step} holds block {repeated[0]} twice, but a draw is a set of "
                "distinct blocks; pass the active sets a LISA run wrote (active_sets.json)"
            )
        outside = [b for b in blocks if not 0 <= b < policy.num_blocks]
        if outside:
            raise ValueError(
                f"the draw at step {step} has block {outside[0]}, but --policy {args.policy} "
                f"has {policy.num_blocks} blocks (0..{policy.num_blocks - 1}); pass the policy "
                "the run drew from"
            )
        if len(blocks) != policy.gamma:
            raise ValueError(
                f"the draw at step {step} has {len(blocks)} blocks, but --policy {args.policy} "
                f"draws gamma {policy.gamma}; pass the policy the run drew from"
            )


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Read every input and check the output folder; the work draws the plots."""
    from diagnostics import plots
    from diagnostics.policy import SamplingPolicy
    from diagnostics.recorder import load_norms
    from lisa_apps.outputs import RunFolder

    if not (args.norms or args.policy):
        raise ValueError("pass --norms and/or --policy (and --history with --policy)")
    if args.history and not args.policy:
        raise ValueError("--history is compared against a policy; pass --policy too")
    folder = RunFolder(
        args.out, command="lisa plot", arguments=vars(args), overwrite=args.overwrite
    ).check()
    table = policy = history = None
    if args.norms:
        table = load_norms(args.norms)
        for flag, column, value in (
            ("--kind", "kind", args.kind),
            ("--reduce", "reduce", args.reduce),
        ):
            if value not in set(table[column]):
                raise ValueError(
                    f"{flag} {value}: {args.norms} recorded only "
                    f"{', '.join(sorted(set(table[column])))}"
                )
    if args.policy:
        policy = SamplingPolicy.from_json(check_policy_path(args.policy))
    if args.history:
        history = _read_history(Path(args.history))
        try:  # the same check the plot makes, here before any file is written
            _check_draws(plots._history_rows(history), policy, args)
            plots.inclusion_frequencies(history, policy.num_blocks)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"--history {args.history}: {error}") from None

    def work() -> int:
        with folder:
            if table is not None:
                plots.plot_layer_norms(
                    table, folder.file("layer_norms.png"), kind=args.kind, reduce=args.reduce
                )
                plots.plot_norm_heatmap(
                    table, folder.file("norm_heatmap.png"), kind=args.kind, reduce=args.reduce
                )
            if policy is not None:
                plots.plot_policy(policy, folder.file("policy.png"))
                if history is not None:
                    plots.plot_inclusion_frequencies(
                        history, policy, folder.file("inclusion.png")
                    )
        print("wrote " + ", ".join(str(path) for path in folder.kept()))
        return 0

    return work
