"""`lisa diagnose`: LoRA and FT probe runs, norms table, skew summary, policy and plots in one go."""

from __future__ import annotations

import argparse
import logging

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
    import pandas as pd

    from diagnostics.pipeline import DiagnoseSettings, diagnose
    from diagnostics.skew import side_by_side
    from lisa.data import load_examples
    from lisa.layers import LayerMap
    from lisa.models import load_model

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = DiagnoseSettings(
            steps=args.steps,
            lr_lora=args.lr_lora,
            lr_ft=args.lr_ft,
            rank=args.rank,
            gamma=args.gamma,
            temperature=args.temperature,
            floor=args.floor,
            batch_size=args.batch_size,
            max_length=args.max_length,
            kinds=args.kinds,
            reduce=args.reduce,
            policy_kind=args.policy_kind,
            record_every=args.record_every,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as error:
        print(f"error: {error}")
        return 2

    model, tokenizer = load_model(args.model, seed=args.seed)
    layer_map = LayerMap.from_model(model)
    examples = load_examples(
        args.data, split="train", num_examples=args.num_examples, seed=args.seed
    )
    print(
        f"model {args.model}: {layer_map.num_blocks} blocks, tied={layer_map.tied}; "
        f"{len(examples)} examples; {args.steps} steps per probe"
    )
    command = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    diagnosis = diagnose(
        model, tokenizer, examples, args.out, settings, model_name=args.model, command=command
    )
    for method in ("lora", "ft"):
        losses = diagnosis.losses[method]
        print(
            f"{method} probe: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
            f"{diagnosis.seconds[method]:.0f} s"
        )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(side_by_side(diagnosis.summary).to_string())
    print(
        "policy inclusion probabilities:",
        " ".join(f"{p:.3f}" for p in diagnosis.policy.inclusion_probabilities),
    )
    print(f"wrote {', '.join(diagnosis.files)} to {args.out} in {diagnosis.seconds['total']:.0f} s")
    return 0
