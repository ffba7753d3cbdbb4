"""Write your own block sampler, check that its inclusion probabilities are exact, train with it.

A sampler is any object with `num_blocks`, `sample(rng) -> sorted tuple of block indices` and
`inclusion_probabilities()` (the exact probability that each block is in one draw); no base class
is needed. This script writes a "top-anchored" sampler: every draw holds one block picked
uniformly from the `top` blocks nearest the head, plus gamma - 1 blocks picked uniformly from all
the other blocks. Its inclusion probabilities follow in closed form,

    r = (gamma - 1) / (N - 1)
    pi_l = 1/top + (1 - 1/top) * r   for the top blocks,   pi_l = r   for the others,

which sum to gamma. The script checks that formula twice: exactly, by enumerating every equally
likely (anchor, companions) outcome of the design, and empirically, by comparing it with the
realised frequencies of many seeded draws (`diagnostics.plots.inclusion_frequencies`, 95%
Clopper-Pearson intervals). Then it registers the class with `lisa.samplers.register_sampler`
and trains LISA with `LisaConfig(sampler="top-anchored")`: the engine builds a named sampler as
`make_sampler(name, N, gamma=config.gamma)`, so the factory takes `gamma` by keyword.

    python examples/custom_sampler.py                                     # SmolLM2-135M, ~3 min
    python examples/custom_sampler.py --model tiny-llama --steps 2 --out /tmp/sampler  # seconds

Writes into --out: inclusion.png (realised vs exact) and the run's files (metrics.json,
active_sets.json, loss_curve.png, ...).
"""

from __future__ import annotations

import argparse
import itertools
import logging

import numpy as np
import pandas as pd
import torch

from diagnostics.plots import inclusion_frequencies, plot_inclusion_frequencies
from diagnostics.policy import SamplingPolicy
from lisa.config import LisaConfig
from lisa.layers import LayerMap, block_group
from lisa.samplers import Sampler, make_sampler, register_sampler
from lisa_apps.commands.arguments import positive_int
from lisa_apps.data import load_examples
from lisa_apps.models import DEFAULT_MODEL, load_model
from lisa_apps.outputs import RunFolder
from lisa_apps.training import FinetuneConfig, finetune


class TopAnchoredSampler:
    """gamma blocks per draw: one of the `top` highest blocks, plus gamma - 1 of the others.

    pi_l = 1/top + (1 - 1/top) * (gamma - 1)/(N - 1) for the top blocks, (gamma - 1)/(N - 1)
    for the rest; sum_l pi_l = gamma.

    Args:
        num_blocks: N, the model's block count.
        gamma: blocks per draw, 1 <= gamma <= N.
        top: how many of the highest blocks the anchor is drawn from (default: a quarter of the
            blocks, at least one).

    Example:
        >>> TopAnchoredSampler(num_blocks=4, gamma=2, top=1).inclusion_probabilities().tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """

    def __init__(self, num_blocks: int, gamma: int, top: int | None = None) -> None:
        top = max(1, num_blocks // 4) if top is None else top
        if not 1 <= gamma <= num_blocks:
            raise ValueError(f"gamma={gamma} must be in [1, {num_blocks}] (blocks per draw)")
        if not 1 <= top <= num_blocks:
            raise ValueError(
                f"top={top} must be in [1, {num_blocks}] (highest blocks to anchor in)"
            )
        self.num_blocks = num_blocks
        self.gamma = gamma  # a fixed-size design exposes gamma; LisaConfig checks it agrees
        self.top = top

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        anchor = self.num_blocks - self.top + int(rng.integers(self.top))
        others = np.delete(np.arange(self.num_blocks), anchor)
        companions = rng.choice(others, size=self.gamma - 1, replace=False)
        return tuple(sorted([anchor, *(int(b) for b in companions)]))

    def inclusion_probabilities(self) -> np.ndarray:
        rest = (self.gamma - 1) / (self.num_blocks - 1) if self.num_blocks > 1 else 0.0
        pi = np.full(self.num_blocks, rest)
        pi[-self.top :] = 1 / self.top + (1 - 1 / self.top) * rest
        return pi


def enumerated_probabilities(sampler: TopAnchoredSampler) -> np.ndarray:
    """Exact pi by enumeration: every (anchor, companion set) pair of the design is equally likely."""
    counts = np.zeros(sampler.num_blocks)
    outcomes = 0
    for anchor in range(sampler.num_blocks - sampler.top, sampler.num_blocks):
        others = [b for b in range(sampler.num_blocks) if b != anchor]
        for companions in itertools.combinations(others, sampler.gamma - 1):
            counts[[anchor, *companions]] += 1
            outcomes += 1
    return counts / outcomes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--steps", type=int, default=30, help="LISA training steps")
    parser.add_argument("--out", default="sampler-out", help="output folder (new, empty, or an earlier run of this script with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--gamma", type=int, default=2, help="blocks drawn per period")
    parser.add_argument("--interval", type=int, default=5, help="steps per period K")
    parser.add_argument("--draws", type=int, default=20_000, help="seeded draws for the check")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--train-examples", type=positive_int, default=1000, help="generated training problems")
    parser.add_argument("--eval-examples", type=int, default=16, help="held-out examples scored")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="generation budget per answer"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    folder = RunFolder(args.out, command="examples/custom_sampler.py", overwrite=args.overwrite)
    folder.open()  # refused before any work if --out holds another run's results

    model, tokenizer = load_model(args.model, seed=args.seed)
    num_blocks = LayerMap.from_model(model).num_blocks

    # make_sampler(name, N, **kwargs) calls factory(N, **kwargs); the class is its own factory.
    register_sampler("top-anchored", TopAnchoredSampler)
    sampler = make_sampler("top-anchored", num_blocks, gamma=args.gamma)
    assert isinstance(sampler, Sampler)  # the runtime-checkable protocol: the three members exist

    exact = sampler.inclusion_probabilities()
    enumerated = enumerated_probabilities(sampler)
    rng = np.random.default_rng(args.seed)
    draws = [(i, sampler.sample(rng)) for i in range(args.draws)]
    realised = inclusion_frequencies(draws, num_blocks)
    check = pd.DataFrame(
        {
            "exact": exact,
            "enumerated": enumerated,
            "realised": realised["frequency"].to_numpy(),
            "ci_low": realised["low"].to_numpy(),
            "ci_high": realised["high"].to_numpy(),
        },
        index=pd.Index([block_group(i) for i in range(num_blocks)], name="block"),
    )
    # Standard errors of the realised frequencies; |z| beyond ~4 would mean the formula is wrong.
    error = check["realised"].to_numpy() - exact
    standard_error = np.sqrt(exact * (1 - exact) / args.draws)  # 0 where pi is 0 or 1
    z = np.divide(error, standard_error, out=np.zeros_like(error), where=standard_error > 0)
    print(f"top-anchored sampler, N={num_blocks}, gamma={args.gamma}, top={sampler.top}:")
    with pd.option_context("display.max_rows", 40, "display.float_format", "{:.4f}".format):
        print(check)
    print(
        f"sum(pi) = {exact.sum():.6f}; max |exact - enumerated| = "
        f"{np.abs(exact - enumerated).max():.1e}; largest |z| over {args.draws} draws = "
        f"{np.abs(z).max():.2f}; "
        f"inside the 95% interval: {int(((check.ci_low <= exact) & (exact <= check.ci_high)).sum())}"
        f" of {num_blocks} blocks"
    )
    if not np.allclose(exact, enumerated):
        raise SystemExit("inclusion_probabilities() disagrees with the enumeration of the design")
    # plot_inclusion_frequencies draws the target from a policy-like object; wrap the exact pi.
    target = SamplingPolicy(exact, args.gamma, tuple(check.index))
    plot_inclusion_frequencies(draws, target, folder.file("inclusion.png"))

    # Train with it by name. The engine builds its own instance from the registry.
    lisa_config = LisaConfig(
        gamma=args.gamma, interval=args.interval, sampler="top-anchored", seed=args.seed
    )
    train = load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed)
    held_out = load_examples("math", split="test", num_examples=args.eval_examples, seed=args.seed)
    print(f"\ntraining LISA with sampler='top-anchored' for {args.steps} steps (K={args.interval})")
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
    folder.close()
    print(f"active sets (step, blocks): {result.active_history}")
    for stage in ("before", "after"):
        scores = result.metrics[stage]
        print(
            f"{stage:>6}: held-out loss {scores['eval_loss']:.4f}, accuracy {scores['accuracy']:.3f}"
        )
    print(f"wrote {', '.join(folder.written)} to {folder.path}")


if __name__ == "__main__":
    main()
