"""LISA in a plain PyTorch loop: one `lisa.begin_step()` call per step, and the memory it saves.

The whole pattern is: build the optimizer over ALL parameters (before anything is frozen), wrap
model and optimizer in `lisa.Lisa`, and call `lisa.begin_step()` at the start of every
optimizer step, before the forward pass. At step 0 and every `interval` steps after, the engine
draws gamma blocks, freezes every other block, and (state_policy "drop", the default) frees the
gradients and AdamW moments of the blocks that left. The embedding, head and extras (final norm)
train every step.

To show the saving, the script first takes one full fine-tuning (FT) AdamW step on a copy of the
model and prints `lisa.memory.memory_report` for it, then trains with LISA and prints the report
after its last step, per layer group and in total: parameters, gradients and optimizer state in
exact bytes. It checks that the LISA optimizer state is exactly the minimum for the active set
(`minimum_optimizer_state_bytes(lisa.trainable_parameters())`), however many switches happened.
Run it with `--state-policy keep` (what only toggling requires_grad amounts to) and a few
switches, and the state held grows toward full FT's instead.

    python examples/plain_loop_lisa.py                                   # SmolLM2-135M, ~2 min
    python examples/plain_loop_lisa.py --model tiny-llama --steps 2 --out /tmp/loop  # seconds

Writes into --out: memory_ft.csv, memory_lisa.csv and history.json (the draws).
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from lisa import Lisa, LisaConfig
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa.memory import memory_report, minimum_optimizer_state_bytes
from lisa_apps.commands.arguments import positive_int
from lisa_apps.data import DataCollator, load_examples, tokenize_examples
from lisa_apps.models import DEFAULT_MODEL, load_model
from lisa_apps.outputs import RunFolder
from lisa_apps.training import evaluate_loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--out", default="loop-out", help="output folder (new, empty, or an earlier run of this script with --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--gamma", type=int, default=2, help="blocks trained per period")
    parser.add_argument("--interval", type=int, default=5, help="optimizer steps per period K")
    parser.add_argument(
        "--state-policy",
        choices=("drop", "reset", "keep"),
        default="drop",
        help="what happens to the optimizer state of blocks that leave (default drop)",
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATES["lisa"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--train-examples", type=positive_int, default=1000, help="generated training problems")
    parser.add_argument("--eval-examples", type=int, default=32, help="held-out examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def batches(features: list[dict], batch_size: int, seed: int) -> Iterator[list[dict]]:
    """Endless batches from seeded reshuffles of the features."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(features))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [features[i] for i in order[start : start + batch_size]]


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    folder = RunFolder(args.out, command="examples/plain_loop_lisa.py", overwrite=args.overwrite)
    folder.check()  # before any work: refuse another run's results in --out

    model, tokenizer = load_model(args.model, seed=args.seed)
    collate = DataCollator(tokenizer)
    train = tokenize_examples(
        load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed),
        tokenizer,
        max_length=args.max_length,
    )
    held_out = tokenize_examples(
        load_examples("math", split="test", num_examples=args.eval_examples, seed=args.seed),
        tokenizer,
        max_length=args.max_length,
    )
    stream = batches(train, args.batch_size, args.seed)

    # Reference: one full fine-tuning AdamW step on a copy. Every group holds a gradient and two
    # Adam moments as large as its parameters.
    reference = copy.deepcopy(model).train()
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=args.lr)
    reference(**collate(next(stream))).loss.backward()
    reference_optimizer.step()
    ft_report = memory_report(reference, reference_optimizer)  # grads kept: what a step peaks at
    del reference, reference_optimizer

    # LISA: the optimizer over every parameter, then the engine, then one call per step.
    before = evaluate_loss(model, held_out, collate)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    lisa = Lisa(
        model,
        optimizer,
        LisaConfig(
            gamma=args.gamma,
            interval=args.interval,
            seed=args.seed,
            state_policy=args.state_policy,
        ),
    )
    lisa_report = None
    for step in range(args.steps):
        active = lisa.begin_step()  # before the forward pass of every optimizer step
        loss = model(**collate(next(stream))).loss
        loss.backward()
        optimizer.step()
        if step == args.steps - 1:
            lisa_report = memory_report(model, optimizer, lisa.layer_map)  # grads still held
        optimizer.zero_grad()
        print(f"step {step:3d}  active blocks {active}  loss {loss.item():.4f}")
    after = evaluate_loss(model, held_out, collate)
    print(f"held-out loss: {before:.4f} before, {after:.4f} after {args.steps} LISA steps")
    print(f"draws (step, active blocks): {lisa.history}")

    with folder:
        folder.write_text("memory_ft.csv", ft_report.to_csv(index=False))
        folder.write_text("memory_lisa.csv", lisa_report.to_csv(index=False))
        folder.write_json("history.json", lisa.state_dict()["history"])
    columns = ["grad_bytes", "optimizer_state_bytes"]
    side = pd.concat(
        {
            "full FT": ft_report.set_index("group")[columns],
            "LISA": lisa_report.set_index("group")[columns],
        },
        axis=1,
    )
    print("\nbytes after one step of full FT vs after the last LISA step:")
    with pd.option_context("display.max_rows", 50, "display.width", 120):
        print(side.to_string())

    held = int(lisa_report.set_index("group").loc["total", "optimizer_state_bytes"])
    full = int(ft_report.set_index("group").loc["total", "optimizer_state_bytes"])
    minimum = minimum_optimizer_state_bytes(lisa.trainable_parameters())
    print(
        f"\nLISA holds {held:,} bytes of AdamW state, {held / full:.1%} of full FT's {full:,}; "
        f"the minimum for its active set {lisa.trainable_groups()} is {minimum:,}"
        f"{' (exactly that)' if held == minimum else ''}"
    )
    if held != minimum and args.state_policy != "keep":
        raise SystemExit("LISA holds more optimizer state than its active set needs")


if __name__ == "__main__":
    main()
