"""Optimizer state against block count: LISA stays flat while full fine-tuning grows linearly.

Builds the benchmark Llama (hidden 512, MLP 1376, vocab 8192, untied) with 12, 24 and 48 blocks,
trains each with full fine-tuning and with LISA (gamma 2, K 5, state policies drop and keep)
for a few switching periods on short batches (state size does not depend on batch shape), and
prints the exact optimizer state in bytes (lisa.memory) with the AdamW minimum for the trained
set. Runs in one process: it reports exact byte counts, not RSS.

    .venv/bin/python -m bench.scaling                 # 12, 24, 48 blocks, ~3 min on 1 thread
    .venv/bin/python -m bench.scaling --quick         # 2, 4, 8 tiny blocks, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from bench.memory_time import markdown_table
from bench.methods import build_method, minimum_state_bytes, state_bytes
from bench.workload import QUICK_SHAPE, ModelShape, build_bench_llama, make_batches

METHODS = (
    ("ft", {}),
    ("lisa-drop", {"state_policy": "drop"}),
    ("lisa-keep", {"state_policy": "keep"}),
)


def measure(shape: ModelShape, kind: str, policy: dict, args: argparse.Namespace) -> dict:
    """Train one method on a model of `shape`; return its largest and final state with the minimum."""
    model = build_bench_llama(shape, max_positions=args.seq_len, seed=args.seed)
    model.train()
    method = build_method(
        "ft" if kind == "ft" else "lisa",
        gamma=args.gamma,
        interval=args.interval,
        seed=args.seed,
        **policy,
    )
    trained = method.prepare(model)
    largest = 0
    minimum = 0
    for step, batch in enumerate(make_batches(args.steps, 1, args.seq_len, shape.vocab, args.seed)):
        method.begin_step(step)
        method.zero_grad()
        trained(input_ids=batch, labels=batch).loss.backward()
        method.step()
        largest = max(largest, state_bytes(method))
        minimum = minimum_state_bytes(method)
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "max_state_bytes": largest,
        "minimum_state_bytes": minimum,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="default 12 24 48")
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="default: four switching periods")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny blocks (hidden 64), 2 4 8 of them"
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = QUICK_SHAPE if args.quick else ModelShape()
    counts = args.blocks or ([2, 4, 8] if args.quick else [12, 24, 48])
    started = time.perf_counter()

    rows = []
    for count in counts:
        shape = ModelShape(count, base.hidden, base.intermediate, base.vocab, base.heads)
        figures = {name: measure(shape, name, policy, args) for name, policy in METHODS}
        rows.append({"blocks": count, **{name: value for name, value in figures.items()}})
    wall = time.perf_counter() - started

    print(
        f"# optimizer state vs blocks: hidden {base.hidden}, MLP {base.intermediate}, vocab {base.vocab}, "
        f"float32 AdamW; LISA gamma {args.gamma}, K {args.interval}, {args.steps} steps of 1 x {args.seq_len} "
        f"tokens; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; wall {wall:.0f} s\n"
    )
    header = ["blocks", "parameters", "FT state bytes", "LISA drop max state", "LISA minimum"]
    header += ["drop / min", "LISA keep max state", "keep / min", "FT / LISA drop"]
    table = []
    for row in rows:
        ft, drop, keep = row["ft"], row["lisa-drop"], row["lisa-keep"]
        table.append(
            [
                str(row["blocks"]),
                f"{ft['num_parameters']:,}",
                f"{ft['max_state_bytes']:,}",
                f"{drop['max_state_bytes']:,}",
                f"{drop['minimum_state_bytes']:,}",
                f"{drop['max_state_bytes'] / drop['minimum_state_bytes']:.2f}",
                f"{keep['max_state_bytes']:,}",
                f"{keep['max_state_bytes'] / keep['minimum_state_bytes']:.2f}",
                f"{ft['max_state_bytes'] / drop['max_state_bytes']:.2f}",
            ]
        )
    print(markdown_table(header, table))
    if args.json_out is not None:
        args.json_out.write_text(
            json.dumps({"argv": sys.argv, "wall_seconds": wall, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
