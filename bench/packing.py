"""Training throughput with and without --packing: real (non-padding) tokens per second.

Tokenises generated maths problems (lengths vary, as users' sets do) with the tiny Llama's chat
template, then times forward + backward + AdamW steps on the same examples two ways: unpacked
batches of ``--batch-size`` examples padded to the longest, and packed rows of up to
``--max-length`` tokens (lisa_apps.data.pack_features), ``--batch-size`` rows per step. Both
count only the tokens of examples, so padding is cost without credit. torch's CPU threads are
pinned (``--threads``, default 2) and reported, since the ratio depends on them.

    .venv/bin/python -m bench.packing           # ~1 min on 2 cores
    .venv/bin/python -m bench.packing --quick   # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.memory_time import markdown_table
from lisa_apps.data import (
    DataCollator,
    make_math_problems,
    model_inputs,
    pack_features,
    tokenize_examples,
)
from lisa_apps.models import load_model


def time_steps(model, batches: list[dict], warmup: int) -> tuple[float, int]:
    """Median seconds per step after warm-up, and the real tokens per step (mean)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds, tokens = [], []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
            tokens.append(batch["real_tokens"])
    return statistics.median(seconds), round(statistics.mean(tokens))


def make_batches(features: list[dict], batch_size: int, steps: int, collate) -> list[dict]:
    batches = []
    for step in range(steps):
        start = (step * batch_size) % max(len(features) - batch_size + 1, 1)
        rows = features[start : start + batch_size]
        batch = collate(rows)
        batch["real_tokens"] = sum(len(row["input_ids"]) for row in rows)
        batches.append(batch)
    return batches


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64 examples, 5 steps")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.steps, args.warmup = 64, 5, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-llama")
    model.train()
    features = tokenize_examples(
        make_math_problems(args.examples, seed=0), tokenizer, max_length=args.max_length
    )
    collate = DataCollator(tokenizer)
    packed = pack_features(features, args.max_length)
    rows = []
    for layout, items in (("unpacked", features), ("packed", packed)):
        batches = make_batches(items, args.batch_size, args.steps, collate)
        seconds, tokens = time_steps(model, batches, args.warmup)
        width = batches[0]["input_ids"].shape[1]
        rows.append(
            {
                "layout": layout,
                "rows_per_step": args.batch_size,
                "row_tokens": width,
                "real_tokens_per_step": tokens,
                "step_s": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds),
            }
        )
    speedup = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    mean_length = statistics.mean(len(feature["input_ids"]) for feature in features)
    print(
        f"tiny-llama, {len(features)} maths examples (mean {mean_length:.0f} tokens) -> "
        f"{len(packed)} packed rows of <= {args.max_length}; torch threads {torch.get_num_threads()}"
    )
    header = list(rows[0])
    print(markdown_table(header, [[str(row[key]) for key in header] for row in rows]))
    print(f"packed / unpacked tokens per second: {speedup:.2f}")
    result = {"bench": "packing", "threads": args.threads, "rows": rows, "speedup": speedup}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
