"""`lisa plot`: redraw the diagnostics plots from saved norms, policy and history files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa plot`."""
    parser.add_argument("--norms", default=None, help="norms.csv (Figure-2 plot and heatmap)")
    parser.add_argument("--policy", default=None, help="policy.json (policy vs uniform)")
    parser.add_argument(
        "--history",
        default=None,
        help="active sets of a LISA run, .json ([[step, [blocks]], ...]) or .csv "
        "(columns step,block or step,active_blocks); needs --policy",
    )
    parser.add_argument("--kind", default="weight", help="norm kind to plot (default weight)")
    parser.add_argument("--reduce", default="l2", help="reduction to plot (default l2)")
    parser.add_argument("--out", default="plots", help="output folder")


def _read_history(path: Path):
    import pandas as pd

    if path.suffix == ".csv":
        return pd.read_csv(path)
    return json.loads(path.read_text())


def run(args: argparse.Namespace) -> int:
    """Draw every plot the given files allow; prints the files written."""
    from diagnostics import plots
    from diagnostics.policy import SamplingPolicy
    from diagnostics.recorder import load_norms

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if not (args.norms or args.policy):
        print("error: pass --norms and/or --policy (and --history with --policy)")
        return 2
    if args.history and not args.policy:
        print("error: --history is compared against a policy; pass --policy too")
        return 2
    out = Path(args.out)
    written = []
    if args.norms:
        table = load_norms(args.norms)
        plots.plot_layer_norms(table, out / "layer_norms.png", kind=args.kind, reduce=args.reduce)
        plots.plot_norm_heatmap(table, out / "norm_heatmap.png", kind=args.kind, reduce=args.reduce)
        written += [out / "layer_norms.png", out / "norm_heatmap.png"]
    if args.policy:
        policy = SamplingPolicy.from_json(args.policy)
        plots.plot_policy(policy, out / "policy.png")
        written.append(out / "policy.png")
        if args.history:
            history = _read_history(Path(args.history))
            plots.plot_inclusion_frequencies(history, policy, out / "inclusion.png")
            written.append(out / "inclusion.png")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
