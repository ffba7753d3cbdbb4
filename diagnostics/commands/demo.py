"""`lisa demo`: the main job. Diagnose the model, derive a policy, fine-tune with LISA, report.

On the embedded default (SmolLM2-135M-Instruct) with the default budget it fits in about ten
minutes on two CPU cores: two 20-step probes, then 60 LISA steps on generated maths problems,
with held-out loss and exact-match accuracy before and after.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

DEFAULT_PROBE_STEPS = 20
DEFAULT_TRAIN_STEPS = 60
DEFAULT_TRAIN_EXAMPLES = 1000
DEFAULT_EVAL_EXAMPLES = 32
DEFAULT_GAMMA = 2
DEFAULT_INTERVAL = 5


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa demo`."""
    from lisa.models import DEFAULT_MODEL

    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name or folder (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--data", default="math", help="'math' (generated) or a .jsonl file")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument(
        "--probe-steps",
        type=int,
        default=DEFAULT_PROBE_STEPS,
        help=f"steps of each diagnostic probe (default {DEFAULT_PROBE_STEPS})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_TRAIN_STEPS,
        help=f"LISA fine-tuning steps (default {DEFAULT_TRAIN_STEPS})",
    )
    parser.add_argument("--gamma", type=int, default=DEFAULT_GAMMA, help="blocks per period")
    parser.add_argument("--interval", type=int, default=DEFAULT_INTERVAL, help="steps per period K")
    parser.add_argument("--lr", type=float, default=None, help="LISA learning rate")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--probe-max-length", type=int, default=128, help="tokens per probe example"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per training example")
    parser.add_argument(
        "--train-examples", type=int, default=DEFAULT_TRAIN_EXAMPLES, help="training examples"
    )
    parser.add_argument(
        "--eval-examples", type=int, default=DEFAULT_EVAL_EXAMPLES, help="held-out examples"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96, help="generation budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    """Diagnose, derive the policy, train with LISA on it, print and save the report."""
    import pandas as pd
    import torch

    from diagnostics.pipeline import DiagnoseSettings, diagnose
    from diagnostics.skew import side_by_side
    from diagnostics.training import FinetuneConfig, finetune
    from lisa.data import load_examples
    from lisa.models import load_model

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    try:
        settings = DiagnoseSettings(
            steps=args.probe_steps,
            gamma=args.gamma,
            batch_size=args.batch_size,
            max_length=args.probe_max_length,
            kinds=("weight", "delta"),
            seed=args.seed,
            progress=not args.no_progress,
        )
        model, tokenizer = load_model(args.model, seed=args.seed)
        train_examples = load_examples(
            args.data, split="train", num_examples=args.train_examples, seed=args.seed
        )
        eval_examples = load_examples(
            args.data, split="test", num_examples=args.eval_examples, seed=args.seed
        )
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"lisa demo: error: {error}")
        return 2

    print(f"[1/3] diagnose {args.model}: LoRA and FT probes, {args.probe_steps} steps each")
    diagnosis = diagnose(
        model, tokenizer, train_examples, out / "diagnose", settings, model_name=args.model
    )
    policy = diagnosis.policy
    print(f"[2/3] policy (gamma {policy.gamma}) from the LoRA / FT weight-norm ratio")
    print(f"[3/3] LISA fine-tuning: {args.steps} steps, K={args.interval}, policy sampler")
    config = FinetuneConfig(
        method="lisa",
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        lisa=policy.to_lisa_config(interval=args.interval, seed=args.seed),
        max_new_tokens=args.max_new_tokens,
    )
    result = finetune(
        model,
        tokenizer,
        train_examples,
        eval_examples,
        config,
        out_dir=out / "train",
        progress=not args.no_progress,
    )

    before, after = result.metrics["before"], result.metrics["after"]
    report = {
        "model": args.model,
        "skew": side_by_side(diagnosis.summary).reset_index().to_dict(orient="records"),
        "policy": {
            "gamma": policy.gamma,
            "inclusion_probabilities": [float(p) for p in policy.inclusion_probabilities],
        },
        "lisa": result.metrics["settings"],
        "before": before,
        "after": after,
        "seconds": {
            "diagnose": round(diagnosis.seconds["total"], 1),
            "train": result.metrics["train_runtime_s"],
            "total": round(time.perf_counter() - started, 1),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    print("\n== skew (per-layer mean norms, LoRA vs FT) ==")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(side_by_side(diagnosis.summary).to_string())
    probabilities = policy.inclusion_probabilities
    print(
        f"\n== policy == gamma {policy.gamma} of {probabilities.size} blocks; inclusion "
        f"probability min {probabilities.min():.3f}, max {probabilities.max():.3f} "
        f"(uniform {policy.gamma / probabilities.size:.3f})"
    )
    print("\n== held-out (before -> after LISA) ==")
    print(f"loss      {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}")
    if before.get("accuracy") is not None:
        print(
            f"accuracy  {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
            f"({after['num_scored']} problems, exact match of the final number)"
        )
    print(
        f"\nwrote {out}/diagnose, {out}/train and {out}/report.json "
        f"in {report['seconds']['total']:.0f} s"
    )
    return 0
