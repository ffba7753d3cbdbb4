"""Compare LISA, LoRA and full fine-tuning on one budget: same data, seed and number of steps.

Each method starts from a fresh copy of the same model (same seed), trains for the same number of
optimizer steps on the same generated maths problems, in the same order, through the runner
behind `lisa train` (`lisa_apps.training.finetune`, a transformers Trainer), and is scored on
the same held-out problems: token-level loss on the worked solutions and exact-match accuracy of
the final answer from greedy generation. Each method uses the library's default learning rate
for it (LISA and LoRA move fewer weights per step and want a larger rate than FT). The table adds
the seconds per step and the optimizer state each method's Trainer holds after its last step, in
exact bytes (`lisa.memory.optimizer_state_bytes`, measured: all parameters for FT, the adapters
for LoRA, E + H + extras + the gamma active blocks for LISA, whose engine frees the state of every
block that leaves the active set).

    python examples/compare_methods.py                           # SmolLM2-135M, ~10 min on 2 cores
    python examples/compare_methods.py --model tiny-llama --steps 2 --out /tmp/compare  # seconds

A couple of dozen steps on a 135M model is a smoke-sized budget: read the table for cost and for
the direction of the loss, not for a ranking. Writes into --out: comparison.csv and one folder
per method with its run files (metrics.json, log_history.csv, loss_curve.png, ...).
"""

from __future__ import annotations

import argparse
import logging

import pandas as pd
import torch

from lisa.config import LisaConfig
from lisa_apps.commands.arguments import positive_int
from lisa_apps.data import load_examples
from lisa_apps.models import DEFAULT_MODEL, load_model
from lisa_apps.outputs import RunFolder
from lisa_apps.training import METHODS, FinetuneConfig, finetune


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps, every method")
    parser.add_argument("--out", default="compare-out", help="output folder (new, empty, or an earlier run of this script with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of lisa,lora,ft")
    parser.add_argument("--gamma", type=int, default=2, help="LISA: blocks per period")
    parser.add_argument("--interval", type=int, default=5, help="LISA: steps per period K")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--train-examples", type=positive_int, default=1000, help="generated training problems")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out problems scored")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="generation budget per answer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy; the
    # seconds-per-step column is only comparable when every method runs on the same threads.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    folder = RunFolder(args.out, command="examples/compare_methods.py", overwrite=args.overwrite)
    folder.open()  # refused before any work if --out holds another run's results

    train = load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed)
    held_out = load_examples("math", split="test", num_examples=args.eval_examples, seed=args.seed)
    rows = []
    before = None
    for method in methods:
        model, tokenizer = load_model(args.model, seed=args.seed)  # a fresh, identical start
        lisa = (
            LisaConfig(gamma=args.gamma, interval=args.interval, seed=args.seed)
            if method == "lisa"
            else None
        )
        config = FinetuneConfig(
            method=method,
            steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            lisa=lisa,
            max_new_tokens=args.max_new_tokens,
        )
        print(f"{method}: {args.steps} steps at lr {config.resolved_learning_rate:g}")
        result = finetune(
            model,
            tokenizer,
            train,
            held_out,
            config,
            out_dir=folder.subfolder(method),
            progress=False,
            evaluate_before=before is None,  # every method starts from the same weights
        )
        metrics = result.metrics
        before = metrics.get("before", before)
        rows.append(
            {
                "method": method,
                "learning_rate": config.resolved_learning_rate,
                "trained_parameters": metrics["trainable_parameters"],
                "loss_before": before["eval_loss"],
                "loss_after": metrics["after"]["eval_loss"],
                "accuracy_before": before["accuracy"],
                "accuracy_after": metrics["after"]["accuracy"],
                "seconds_per_step": metrics["seconds_per_step"],
                "optimizer_state_bytes": metrics["optimizer_state_bytes"],
            }
        )
    table = pd.DataFrame(rows).set_index("method")
    folder.write_text("comparison.csv", table.to_csv())
    folder.close()
    print(
        f"\n{args.model}, {args.steps} steps, batch {args.batch_size}, {len(held_out)} held-out problems:"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(
            table.to_string(
                formatters={
                    "learning_rate": "{:g}".format,
                    "trained_parameters": "{:,}".format,
                    "optimizer_state_bytes": "{:,}".format,
                    "loss_before": "{:.4f}".format,
                    "loss_after": "{:.4f}".format,
                    "seconds_per_step": "{:.3f}".format,
                }
            )
        )
    print(f"wrote comparison.csv and {', '.join(methods)} run folders to {folder.path}")


if __name__ == "__main__":
    main()
