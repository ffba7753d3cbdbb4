"""Derive a custom sampling policy from per-layer norms, save it as JSON, and train LISA with it.

The paper's importance weight of block l is s_l = w_LoRA^l / w_FT^l, the ratio of its mean norms
in a LoRA and an FT run; `diagnostics.policy.derive_policy` turns those scores into exact
fixed-size inclusion probabilities pi (each in [0, 1], summing to gamma). This script shows
three policies from the same norms and what each knob does:

- "paper":  pi from the raw scores (temperature 1, no floor);
- "tuned":  the scores softened with a temperature < 1 and every block given a floor, so no
            block is starved by a noisy short probe;
- "edited": the tuned scores edited by hand (here: block 0 never trains), turned into pi with
            `lisa.samplers.inclusion_probabilities_from_scores` and wrapped in a SamplingPolicy
            that keeps the model's layer signature.

Each is saved with `to_json` (JSON, never pickle), the chosen one is loaded back with
`SamplingPolicy.from_json`, checked against the model (a policy refuses a model whose layers
differ), and used for a short LISA run through the `weighted` sampler. `lisa train --policy
<out>/policy.json` does the same from the command line.

    python examples/custom_policy.py --norms skew-out/norms.csv  # SmolLM2-135M, ~3 min
    python examples/custom_policy.py --model tiny-llama --steps 2 --out /tmp/policy  # seconds

Without --norms it first runs short LoRA and FT probes (--probe-steps) with
`lisa_apps.pipeline`, recording "weight" and "delta" norms (its files go to <out>/probes).
--kind picks which the scores use: "weight" is the paper's formula; "delta" (how far each layer
moved) separates the blocks more after a short probe. Writes into --out: policy_paper.json,
policy_tuned.json, policy_edited.json, policy.json (the one trained with), policy.png, the run's
files (metrics.json, active_sets.json, loss_curve.png, ...) and inclusion.png (realised draws
against the policy).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
import torch

from diagnostics.plots import plot_inclusion_frequencies, plot_policy
from diagnostics.policy import SamplingPolicy, derive_policy
from diagnostics.recorder import load_norms
from lisa.samplers import inclusion_probabilities_from_scores
from lisa_apps.commands.arguments import positive_int
from lisa_apps.data import load_examples
from lisa_apps.models import DEFAULT_MODEL, inspect_model, load_model, load_tokenizer
from lisa_apps.outputs import RunFolder
from lisa_apps.pipeline import DiagnoseSettings, diagnose
from lisa_apps.training import FinetuneConfig, finetune


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--norms", default=None, help="a norms.csv to derive from (default: probe)")
    parser.add_argument(
        "--probe-steps", type=int, default=10, help="steps per probe without --norms"
    )
    parser.add_argument("--steps", type=int, default=30, help="LISA training steps")
    parser.add_argument("--out", default="policy-out", help="output folder (new, empty, or an earlier run of this script with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--gamma", type=int, default=2, help="blocks drawn per period")
    parser.add_argument("--interval", type=int, default=5, help="steps per period K")
    parser.add_argument("--temperature", type=float, default=0.5, help="score exponent of 'tuned'")
    parser.add_argument(
        "--floor", type=float, default=None, help="least pi of 'tuned' (default gamma/4N)"
    )
    parser.add_argument(
        "--kind", choices=("weight", "delta"), default="weight", help="norm kind the scores use"
    )
    parser.add_argument("--use", choices=("paper", "tuned", "edited"), default="tuned")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--train-examples", type=positive_int, default=1000, help="generated training problems")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out examples scored")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="generation budget per answer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def probe_norms(folder: RunFolder, args: argparse.Namespace) -> pd.DataFrame:
    """Short LoRA and FT probes on the same batches (each loads the model), as `lisa diagnose`."""
    examples = load_examples("math", split="train", num_examples=64, seed=args.seed)
    settings = DiagnoseSettings(
        steps=args.probe_steps,
        kinds=("weight", "delta"),
        max_length=args.max_length,
        seed=args.seed,
        progress=False,
    )
    tokenizer = load_tokenizer(args.model)
    return diagnose(args.model, tokenizer, examples, folder.subfolder("probes"), settings).table


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    # One folder for everything this script writes: refused if it holds another run's results
    # (unless --overwrite), and its manifest lisa-run.json lists every file as it is written.
    folder = RunFolder(args.out, command="examples/custom_policy.py", overwrite=args.overwrite)
    with folder:
        run(args, folder)
    print(f"wrote {', '.join(folder.written)} to {folder.path}")


def run(args: argparse.Namespace, folder: RunFolder) -> None:
    info = inspect_model(args.model)  # the layer map from the config, before any weight loads
    norms = load_norms(args.norms) if args.norms else probe_norms(folder, args)
    floor = args.gamma / (4 * info.num_blocks) if args.floor is None else args.floor

    # derive_policy picks the "lora" and "ft" rows out of one table; the signature of the model's
    # blocks goes into the policy, so it will refuse to train a different model.
    policies = {
        "paper": derive_policy(
            norms, norms, args.gamma, kind=args.kind, signature=info.layer_signature,
            source=args.norms, model=args.model,
        ),
        "tuned": derive_policy(
            norms,
            norms,
            args.gamma,
            temperature=args.temperature,
            floor=floor,
            kind=args.kind,
            signature=info.layer_signature,
            source=args.norms,
            model=args.model,
        ),
    }
    # Hand edit: take the scores the tuned policy was derived from, zero block 0's score (for
    # instance because you want the lowest block left as pretrained), and re-derive. No floor
    # here: a floor gives every block, block 0 included, at least that probability.
    tuned = policies["tuned"]
    scores = np.array(tuned.provenance["scores"])
    scores[0] = 0.0
    edited_pi = inclusion_probabilities_from_scores(
        scores, args.gamma, temperature=args.temperature
    )
    policies["edited"] = SamplingPolicy(
        inclusion_probabilities=edited_pi,
        gamma=args.gamma,
        layer_names=tuned.layer_names,
        signature=tuned.signature,
        provenance={**tuned.provenance, "floor": 0.0, "edit": "block 0 score set to 0 by hand"},
    )

    table = pd.DataFrame(
        {name: policy.inclusion_probabilities for name, policy in policies.items()},
        index=pd.Index(tuned.layer_names, name="block"),
    )
    table["uniform"] = args.gamma / info.num_blocks
    table.insert(0, "score", tuned.provenance["scores"])
    print(
        f"scores s_l = w_lora / w_ft ({args.kind} norms) and inclusion probabilities per block "
        f"(gamma={args.gamma}: every pi column sums to gamma):"
    )
    with pd.option_context("display.max_rows", 40, "display.float_format", "{:.4g}".format):
        print(table)
    for name, policy in policies.items():
        policy.to_json(folder.file(f"policy_{name}.json"))

    # What a user does later, perhaps in another process: load the JSON, check it against the
    # model, and turn it into a LisaConfig (its `weighted` sampler, and E/H/extras as it says).
    chosen = policies[args.use].to_json(folder.file("policy.json"))
    policy = SamplingPolicy.from_json(chosen)
    model, tokenizer = load_model(args.model, seed=args.seed)
    policy.check_compatible(model)
    plot_policy(policy, folder.file("policy.png"))
    lisa_config = policy.to_lisa_config(interval=args.interval, seed=args.seed)
    train = load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed)
    held_out = load_examples("math", split="test", num_examples=args.eval_examples, seed=args.seed)
    print(
        f"\ntraining LISA with the {args.use!r} policy for {args.steps} steps (K={args.interval})"
    )
    result = finetune(
        model,
        tokenizer,
        train,
        held_out,
        FinetuneConfig(
            method="lisa",
            steps=args.steps,
            max_length=args.max_length,
            seed=args.seed,
            lisa=lisa_config,
            max_new_tokens=args.max_new_tokens,
        ),
        out_dir=folder,
        progress=False,
    )
    plot_inclusion_frequencies(result.active_history, policy, folder.file("inclusion.png"))
    print(f"active sets (step, blocks): {result.active_history}")
    for stage in ("before", "after"):
        held_out_scores = result.metrics[stage]
        print(
            f"{stage:>6}: held-out loss {held_out_scores['eval_loss']:.4f}, "
            f"accuracy {held_out_scores['accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
