"""`lisa policy`: derive a SamplingPolicy (JSON) from a saved norms table."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa policy`."""
    parser.add_argument("--norms", required=True, help="norms.csv written by `lisa diagnose`")
    parser.add_argument("--gamma", type=int, required=True, help="blocks drawn per period")
    parser.add_argument("--temperature", type=float, default=1.0, help="score exponent")
    parser.add_argument("--floor", type=float, default=0.0, help="least inclusion probability")
    parser.add_argument("--kind", default="weight", help="norm kind to use (default weight)")
    parser.add_argument("--reduce", default="l2", help="reduction to use (default l2)")
    parser.add_argument("--lora-method", default="lora", help="method name of the LoRA rows")
    parser.add_argument("--ft-method", default="ft", help="method name of the FT rows")
    parser.add_argument("--out", default="policy.json", help="policy file to write")


def run(args: argparse.Namespace) -> int:
    """Derive the policy and write it; prints the probabilities."""
    from diagnostics.policy import derive_policy
    from diagnostics.recorder import load_norms

    table = load_norms(args.norms)
    methods = set(table["method"])
    for method in (args.lora_method, args.ft_method):
        if method not in methods:
            print(
                f"error: {args.norms} has no rows of method {method!r} (it has {sorted(methods)})"
            )
            return 2
    signature = table.attrs.get("sidecar", {}).get("layer_signature")
    policy = derive_policy(
        table[table["method"] == args.lora_method].assign(method="lora"),
        table[table["method"] == args.ft_method].assign(method="ft"),
        args.gamma,
        temperature=args.temperature,
        floor=args.floor,
        kind=args.kind,
        reduce=args.reduce,
        signature=signature,
        source=str(args.norms),
    )
    path = policy.to_json(args.out)
    print("scores (w_lora / w_ft):", " ".join(f"{s:.4g}" for s in policy.provenance["scores"]))
    print("inclusion probabilities:", " ".join(f"{p:.3f}" for p in policy.inclusion_probabilities))
    print(f"wrote {path}")
    return 0
