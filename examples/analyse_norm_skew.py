"""Analyse a model's per-layer norm skew: short LoRA and FT probes, the skew table, Figure 2.

LISA rests on one measurement (Pan et al. 2024, Figure 2): over a short run, the mean norm of
each layer, w^l = (1/T) sum_t ||theta_t^l||, is lopsided under LoRA (the embedding E and/or the
head H dwarf the middle blocks) and flat under full fine-tuning (FT). This script repeats that
measurement on any model `lisa.models.load_model` accepts, through `diagnostics.pipeline` (the
pipeline behind `lisa diagnose`): a LoRA probe and an FT probe on the same batches (each trains a
copy, never the model you pass), the norms you ask for recorded at every step, then the skew
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

from diagnostics.pipeline import DiagnoseSettings, diagnose
from diagnostics.skew import mean_norms, side_by_side
from lisa.data import load_examples, tokenize_examples
from lisa.layers import LayerMap
from lisa.models import DEFAULT_MODEL, load_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--data", default="math", help="'math' (generated) or a .jsonl file")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per probe")
    parser.add_argument("--out", default="skew-out", help="output folder")
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
    out.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load_model(args.model, seed=args.seed)
    layer_map = LayerMap.from_model(model)
    examples = load_examples(
        args.data, split="train", num_examples=args.num_examples, seed=args.seed
    )
    features = tokenize_examples(examples, tokenizer, max_length=args.max_length)
    print(
        f"{args.model}: {type(model).__name__}, {layer_map.num_blocks} blocks, "
        f"tied embeddings: {layer_map.tied}; {len(features)} examples, {args.steps} steps per probe"
    )

    settings = DiagnoseSettings(
        steps=args.steps,
        gamma=min(2, layer_map.num_blocks),
        kinds=kinds,
        reduce=(args.reduce,),
        max_length=args.max_length,
        seed=args.seed,
    )
    diagnosis = diagnose(model, tokenizer, features, out, settings, model_name=args.model)
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
