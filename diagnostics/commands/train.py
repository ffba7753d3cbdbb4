"""`lisa train`: fine-tune with LISA, LoRA or full FT on one budget and report before/after scores."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

DEFAULT_STEPS = 60
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 256
DEFAULT_EVAL_EXAMPLES = 32
DEFAULT_TRAIN_EXAMPLES = 1000


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa train`."""
    from diagnostics.training import (
        DEFAULT_LEARNING_RATES,
        DEFAULT_LISA_GAMMA,
        DEFAULT_LISA_INTERVAL,
        METHODS,
    )
    from lisa.models import DEFAULT_MODEL

    rates = ", ".join(f"{method} {rate:g}" for method, rate in DEFAULT_LEARNING_RATES.items())
    parser.add_argument(
        "--method", choices=METHODS, default="lisa", help="what trains (default lisa)"
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"smollm2-135m, tiny-llama, tiny-gpt2, tiny-qwen2 or a local folder (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--data",
        default="math",
        help="'math' (generated word problems) or a .jsonl file (10%% held out by content hash)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"optimizer steps (default {DEFAULT_STEPS})",
    )
    parser.add_argument("--out", required=True, help="output folder for metrics, history and plot")
    lisa = parser.add_argument_group("LISA")
    lisa.add_argument(
        "--policy", default=None, help="policy.json from `lisa diagnose` (weighted sampler)"
    )
    lisa.add_argument(
        "--gamma",
        type=int,
        default=None,
        help=f"blocks per period (default {DEFAULT_LISA_GAMMA}, or the policy's)",
    )
    lisa.add_argument(
        "--interval",
        type=int,
        default=DEFAULT_LISA_INTERVAL,
        help=f"steps per period K (default {DEFAULT_LISA_INTERVAL})",
    )
    lisa.add_argument(
        "--sampler", default="uniform", help="registered sampler name (default uniform)"
    )
    lisa.add_argument(
        "--state-policy",
        choices=("drop", "reset", "keep"),
        default="drop",
        help="optimizer state of blocks that leave the active set (default drop)",
    )
    training = parser.add_argument_group("training")
    training.add_argument(
        "--lr", type=float, default=None, help=f"learning rate (defaults: {rates})"
    )
    training.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    training.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per example"
    )
    training.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 * rank)")
    training.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help=f"training examples (default {DEFAULT_TRAIN_EXAMPLES} generated, or the whole file)",
    )
    training.add_argument(
        "--eval-examples", type=int, default=DEFAULT_EVAL_EXAMPLES, help="held-out examples scored"
    )
    training.add_argument(
        "--max-new-tokens", type=int, default=96, help="generation budget per answer"
    )
    training.add_argument("--seed", type=int, default=0)
    training.add_argument(
        "--no-accuracy",
        action="store_true",
        help="held-out loss only: skip generation and accuracy",
    )
    training.add_argument(
        "--skip-before", action="store_true", help="do not score the model before training"
    )
    training.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    training.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    """Train, evaluate before and after, write the run files into --out, print a summary."""
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"lisa train: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from diagnostics.training import DEFAULT_LISA_GAMMA, FinetuneConfig, finetune
    from lisa.data import load_examples
    from lisa.models import load_model
    from lisa.switching import LisaConfig

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.method != "lisa" and args.policy is not None:
        raise ValueError(f"--policy applies to --method lisa only, not {args.method}")
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, seed=args.seed)
    train_count = args.train_examples
    if train_count is None and args.data == "math":
        train_count = DEFAULT_TRAIN_EXAMPLES
    train_examples = load_examples(
        args.data, split="train", num_examples=train_count, seed=args.seed
    )
    eval_examples = load_examples(
        args.data, split="test", num_examples=args.eval_examples, seed=args.seed
    )

    lisa_config = None
    if args.method == "lisa" and args.policy is not None:
        from diagnostics.policy import SamplingPolicy

        policy = SamplingPolicy.from_json(args.policy)
        policy.check_compatible(model)
        if args.gamma is not None and args.gamma != policy.gamma:
            raise ValueError(
                f"--gamma {args.gamma} disagrees with the policy's gamma {policy.gamma}; "
                "drop --gamma or derive a policy with that gamma"
            )
        lisa_config = policy.to_lisa_config(
            interval=args.interval, seed=args.seed, state_policy=args.state_policy
        )
    elif args.method == "lisa":
        lisa_config = LisaConfig(
            gamma=args.gamma if args.gamma is not None else DEFAULT_LISA_GAMMA,
            interval=args.interval,
            sampler=args.sampler,
            seed=args.seed,
            state_policy=args.state_policy,
        )
    config = FinetuneConfig(
        method=args.method,
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        lora_rank=args.lora_rank,
        lisa=lisa_config,
        max_new_tokens=args.max_new_tokens,
        score_accuracy=not args.no_accuracy,
    )
    print(
        f"lisa train: {args.method} on {args.model}, {len(train_examples)} train / "
        f"{len(eval_examples)} held-out examples from {args.data!r}, {args.steps} steps, "
        f"lr {config.resolved_learning_rate:g}, batch {args.batch_size}"
    )
    result = finetune(
        model,
        tokenizer,
        train_examples,
        eval_examples,
        config,
        out_dir=args.out,
        progress=not args.no_progress,
        evaluate_before=not args.skip_before,
    )
    print(format_summary(result.metrics))
    print(f"wrote {', '.join(sorted(p.name for p in Path(args.out).iterdir() if p.is_file()))} to {args.out} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


def format_summary(metrics: dict) -> str:
    """A small before/after table of held-out loss and accuracy, plus timing."""

    def cell(stage: str, key: str, pattern: str) -> str:
        value = metrics.get(stage, {}).get(key)
        return "-" if value is None else format(value, pattern)

    lines = [
        f"{'':8}{'held-out loss':>15}{'accuracy':>10}",
        *(
            f"{stage:8}{cell(stage, 'eval_loss', '.4f'):>15}{cell(stage, 'accuracy', '.3f'):>10}"
            for stage in ("before", "after")
        ),
        f"training loss {metrics['train_loss_first']:.4f} -> {metrics['train_loss_last']:.4f}; "
        f"{metrics['seconds_per_step']:.2f} s/step; {metrics['trainable_parameters']:,} trainable parameters",
    ]
    if metrics.get("method") == "lisa":
        lines.append(f"LISA: {metrics['num_switches']} draws over {metrics['num_blocks']} blocks")
    return "\n".join(lines)
