"""`lisa policy`: derive a SamplingPolicy (JSON) from a saved norms table."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lisa_apps.commands.arguments import nonnegative_float, positive_int


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa policy`."""
    from diagnostics.norms import NORM_KINDS, REDUCTIONS

    parser.add_argument("--norms", required=True, help="norms.csv written by `lisa diagnose`")
    parser.add_argument("--gamma", type=positive_int, required=True, help="blocks per period")
    parser.add_argument(
        "--temperature", type=nonnegative_float, default=1.0, help="score exponent (default 1)"
    )
    parser.add_argument(
        "--floor",
        type=nonnegative_float,
        default=0.0,
        help="least inclusion probability of every block, at most gamma / blocks (default 0)",
    )
    parser.add_argument(
        "--kind", choices=NORM_KINDS, default="weight", help="norm kind to use (default weight)"
    )
    parser.add_argument(
        "--reduce", choices=REDUCTIONS, default="l2", help="reduction to use (default l2)"
    )
    parser.add_argument("--lora-method", default="lora", help="method name of the LoRA rows")
    parser.add_argument("--ft-method", default="ft", help="method name of the FT rows")
    parser.add_argument(
        "--out", default="policy.json", help="policy file to write (default policy.json)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists"
    )


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Read the norms and derive the policy (cheap); the work writes it."""
    from diagnostics.policy import derive_policy
    from diagnostics.recorder import load_norms
    from lisa_apps.outputs import check_output_file

    out = check_output_file(args.out, overwrite=args.overwrite)
    table = load_norms(args.norms)
    methods = set(table["method"])
    for flag, method in (("--lora-method", args.lora_method), ("--ft-method", args.ft_method)):
        if method not in methods:
            raise ValueError(
                f"{flag} {method}: {args.norms} has no rows of that method (it has "
                f"{sorted(methods)})"
            )
    for flag, column, value in (("--kind", "kind", args.kind), ("--reduce", "reduce", args.reduce)):
        present = sorted(set(table[column]))
        if value not in present:
            raise ValueError(
                f"{flag} {value}: {args.norms} recorded only {', '.join(present)}; pass one of "
                "those or record it with lisa diagnose"
            )
    num_blocks = int(table["block_index"].dropna().nunique())
    if args.gamma > num_blocks:
        raise ValueError(
            f"--gamma {args.gamma} is more than the {num_blocks} blocks in {args.norms}; use "
            f"--gamma 1..{num_blocks}"
        )
    sidecar = table.attrs.get("sidecar", {})
    try:
        policy = derive_policy(
            table[table["method"] == args.lora_method].assign(method="lora"),
            table[table["method"] == args.ft_method].assign(method="ft"),
            args.gamma,
            temperature=args.temperature,
            floor=args.floor,
            kind=args.kind,
            reduce=args.reduce,
            signature=sidecar.get("layer_signature"),
            source=str(args.norms),
            model=sidecar.get("model_name"),
        )
    except ValueError as error:
        raise ValueError(f"cannot derive a policy from {args.norms}: {error}") from None

    def work() -> int:
        path = policy.to_json(out)
        scores = policy.provenance["scores"]
        print("scores (w_lora / w_ft):", " ".join(f"{s:.4g}" for s in scores))
        print(
            "inclusion probabilities:",
            " ".join(f"{p:.3f}" for p in policy.inclusion_probabilities),
        )
        print(f"wrote {path}")
        return 0

    return work
