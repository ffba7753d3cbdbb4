"""`lisa diagnose`: LoRA and FT probe runs, norms table, skew summary, policy and plots in one go."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

DEFAULT_STEPS = 30
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 128
DEFAULT_NUM_EXAMPLES = 200
DEFAULT_KINDS = ("weight", "trainable", "delta")


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa diagnose`."""
    from lisa.models import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"smollm2-135m, tiny-llama, ... or a local folder (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--data", default="math", help="'math' (generated) or a .jsonl file")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"optimizer steps per probe (default {DEFAULT_STEPS})",
    )
    parser.add_argument("--out", default="diagnostics-out", help="output folder")
    parser.add_argument("--lr-lora", type=float, default=2e-4, help="LoRA probe learning rate")
    parser.add_argument("--lr-ft", type=float, default=2e-5, help="FT probe learning rate")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    parser.add_argument("--gamma", type=int, default=2, help="blocks per period for the policy")
    parser.add_argument("--temperature", type=float, default=1.0, help="policy score exponent")
    parser.add_argument("--floor", type=float, default=0.0, help="policy minimum probability")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    parser.add_argument(
        "--num-examples",
        type=int,
        default=DEFAULT_NUM_EXAMPLES,
        help="training examples to draw batches from",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kinds",
        type=_csv_list,
        default=DEFAULT_KINDS,
        help="comma list of norm kinds (default weight,trainable,delta)",
    )
    parser.add_argument(
        "--reduce",
        type=_csv_list,
        default=("l2",),
        help="comma list of reductions: l2,rms (default l2)",
    )
    parser.add_argument(
        "--policy-kind",
        default=None,
        help="norm kind the policy is derived from (default: weight, the paper's; "
        "else the first of --kinds)",
    )
    parser.add_argument("--record-every", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    """Run both probes and write norms.csv/.json, skew.csv, policy.json and plots into --out."""
    from diagnostics import plots
    from diagnostics.policy import derive_policy
    from diagnostics.probes import run_probe
    from diagnostics.recorder import COLUMNS, _atomic_write_text, _versions, load_norms
    from diagnostics.skew import side_by_side, skew_summary
    from lisa.data import load_examples, tokenize_examples
    from lisa.layers import LayerMap
    from lisa.models import load_model

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy_kind = args.policy_kind or ("weight" if "weight" in args.kinds else args.kinds[0])
    if policy_kind not in args.kinds:
        print(f"error: --policy-kind {policy_kind!r} is not among --kinds {args.kinds}")
        return 2

    model, tokenizer = load_model(args.model, seed=args.seed)
    layer_map = LayerMap.from_model(model)
    examples = load_examples(
        args.data, split="train", num_examples=args.num_examples, seed=args.seed
    )
    features = tokenize_examples(examples, tokenizer, max_length=args.max_length)
    print(
        f"model {args.model}: {layer_map.num_blocks} blocks, tied={layer_map.tied}; "
        f"{len(features)} examples; {args.steps} steps per probe"
    )

    tables, sidecars = [], {}
    for method, lr in (("lora", args.lr_lora), ("ft", args.lr_ft)):
        probe_started = time.perf_counter()
        partial = out / f"norms-{method}.csv"  # streamed as the probe runs: survives a crash
        table = run_probe(
            model,
            features,
            method,
            steps=args.steps,
            lr=lr,
            lora_rank=args.rank,
            batch_size=args.batch_size,
            max_length=args.max_length,
            record_every=args.record_every,
            kinds=args.kinds,
            reduce=args.reduce,
            seed=args.seed,
            tokenizer=tokenizer,
            progress=not args.no_progress,
            run=f"{method}-probe",
            path=partial,
        )
        losses = table.attrs["losses"]
        sidecars[method] = {
            **table.attrs["sidecar"],
            "losses": losses,
            "wall_seconds": time.perf_counter() - probe_started,
        }
        print(
            f"{method} probe: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
            f"{time.perf_counter() - probe_started:.0f} s "
            f"({table.attrs['record_seconds']:.1f} s recording)"
        )
        tables.append(load_norms(partial))

    import pandas as pd

    table = pd.concat(tables, ignore_index=True)[list(COLUMNS)]
    norms_path = out / "norms.csv"
    _atomic_write_text(norms_path, table.to_csv(index=False))
    sidecar = {
        "format": "lisa-norms-sidecar",
        "version": 1,
        "columns": list(COLUMNS),
        "model_class": type(model).__name__,
        "model_name": args.model,
        "group_names": list(layer_map.group_names),
        "num_blocks": layer_map.num_blocks,
        "tied": layer_map.tied,
        "layer_signature": layer_map.signature(),
        "command": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "probes": sidecars,
        "versions": _versions(),
    }
    _atomic_write_text(out / "norms.json", json.dumps(sidecar, indent=2, default=str) + "\n")
    for method in sidecars:
        (out / f"norms-{method}.csv").unlink(missing_ok=True)
        (out / f"norms-{method}.json").unlink(missing_ok=True)

    summary = skew_summary(table, seed=args.seed)
    _atomic_write_text(out / "skew.csv", summary.to_csv(index=False))
    policy = derive_policy(
        table,
        table,
        args.gamma,
        temperature=args.temperature,
        floor=args.floor,
        kind=policy_kind,
        reduce=args.reduce[0],
        layer_map=layer_map,
        source=str(norms_path),
    )
    policy.to_json(out / "policy.json")
    reduce = args.reduce[0]
    written = ["norms.csv", "norms.json", "skew.csv", "policy.json"]
    plots.plot_layer_norms(table, out / "layer_norms.png", kind=policy_kind, reduce=reduce)
    # Over a short run the norms barely move; the relative view shows which layers did.
    plots.plot_norm_heatmap(
        table, out / "norm_heatmap.png", kind=policy_kind, reduce=reduce, relative=True
    )
    plots.plot_policy(policy, out / "policy.png")
    written += ["layer_norms.png", "norm_heatmap.png", "policy.png"]
    for kind in args.kinds:
        if kind != policy_kind:
            plots.plot_layer_norms(table, out / f"layer_norms-{kind}.png", kind=kind, reduce=reduce)
            written.append(f"layer_norms-{kind}.png")

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(side_by_side(summary).to_string())
    print(
        "policy inclusion probabilities:",
        " ".join(f"{p:.3f}" for p in policy.inclusion_probabilities),
    )
    print(f"wrote {', '.join(written)} to {out} in {time.perf_counter() - started:.0f} s")
    return 0
