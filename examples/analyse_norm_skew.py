"""Analyse a model's per-layer norm skew: short LoRA and FT probes, the skew table, Figure 2.

LISA rests on one measurement (Pan et al. 2024, Figure 2): over a short run, the mean norm of
each layer, w^l = (1/T) sum_t ||theta_t^l||, is lopsided under LoRA (the embedding E and/or the
head H dwarf the middle blocks) and flat under full fine-tuning (FT). This script repeats that
measurement on any model `lisa_apps.models.load_model` accepts, through `lisa_apps.pipeline` (the
pipeline behind `lisa diagnose`): a LoRA probe and an FT probe on the same batches (each loads
its own model by name and drops it when done), the norms you ask for recorded at every step, then the skew
summary (E and H over the median block, Gini coefficient over blocks, LoRA and FT side by side,
with bootstrap intervals over steps). What is measured matters, so it records two kinds by
default: "weight" (the layer's current parameters, what the paper's formula says) and "delta"
(how far the layer moved: ||theta_t - theta_0|| for FT, ||scale * B @ A|| for LoRA).

    python examples/analyse_norm_skew.py                        # SmolLM2-135M, ~3 min on 2 cores
    python examples/analyse_norm_skew.py --model tiny-llama --steps 2 --out /tmp/skew  # seconds

Writes into --out what `diagnose` writes: norms.csv with its norms.json provenance (the tidy
table both examples/custom_policy.py and `lisa policy` read), skew.csv, policy.json (derived with
the paper's recipe; examples/custom_policy.py shapes your own), layer_norms.png (the paper's
Figure-2 layout, first kind) and layer_norms-<kind>.png for the others, norm_heatmap.png and
policy.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from diagnostics.skew import mean_norms, side_by_side
from lisa_apps.data import load_examples
from lisa_apps.models import DEFAULT_MODEL, inspect_model, load_tokenizer
from lisa_apps.pipeline import DiagnoseSettings, diagnose


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--data", default="math", help="'math' (generated) or a .jsonl file")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per probe")
    parser.add_argument("--out", default="skew-out", help="output folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument(
        "--kinds", default="weight,delta", help="comma list: weight,trainable,delta"
    )
    parser.add_argument("--reduce", default="l2", choices=("l2", "rms"), help="norm reduction")
    parser.add_argument(
        "--num-examples", type=int, default=200, help="examples to draw batches from"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    out = Path(args.out)

    info = inspect_model(args.model)  # config and layer map only: no weights loaded yet
    tokenizer = load_tokenizer(args.model)
    examples = load_examples(
        args.data, split="train", num_examples=args.num_examples, seed=args.seed
    )
    print(
        f"{args.model}: {info.config.architectures or info.config.model_type}, "
        f"{info.num_blocks} blocks; {len(examples)} examples, {args.steps} steps per probe"
    )

    settings = DiagnoseSettings(
        steps=args.steps,
        gamma=min(2, info.num_blocks),
        kinds=kinds,
        reduce=(args.reduce,),
        max_length=args.max_length,
        seed=args.seed,
    )
    # By name: each probe loads its own copy of the model and drops it when it is done.
    diagnosis = diagnose(args.model, tokenizer, examples, out, settings, overwrite=args.overwrite)
    for method, losses in diagnosis.losses.items():
        print(
            f"{method} probe: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
            f"{diagnosis.seconds[method]:.1f} s"
        )

    # The paper's w^l per layer, LoRA and FT side by side: E, the spread of the blocks, H, extras.
    means = mean_norms(diagnosis.table)
    for kind in kinds:
        profile = means[(means["kind"] == kind) & (means["reduce"] == args.reduce)].pivot_table(
            index="group", columns="method", values="mean_norm", sort=False
        )
        is_block = profile.index.str.startswith("block.")
        spread = profile[is_block].agg(["min", "median", "max"])
        spread.index = [f"blocks ({statistic})" for statistic in spread.index]
        compact = pd.concat([profile.loc[["embed"]], spread, profile[~is_block].drop("embed")])
        print(f"\nmean {kind} norm ({args.reduce}), {int(is_block.sum())} blocks:")
        with pd.option_context("display.float_format", "{:.4g}".format):
            print(compact[["lora", "ft"]])

    print("\nskew (E or H over the median block; Gini over blocks; 95% bootstrap intervals):")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(side_by_side(diagnosis.summary).to_string())
    print(f"\nwrote {', '.join(diagnosis.files)} to {out} in {diagnosis.seconds['total']:.0f} s")


if __name__ == "__main__":
    main()
