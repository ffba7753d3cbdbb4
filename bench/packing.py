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
    parser.add_argument("--max-lengths", default="512,1024", help="packed row lengths to time")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64 examples, 4 steps, rows of 512")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    lengths = [int(part) for part in args.max_lengths.split(",")]
    if args.quick:
        args.examples, args.steps, args.warmup, lengths = 64, 4, 1, [512]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model("tiny-llama")
    model.train()
    features = tokenize_examples(
        make_math_problems(args.examples, seed=0), tokenizer, max_length=min(lengths)
    )
    collate = DataCollator(tokenizer)
    layouts = [("unpacked", None, features)]
    layouts += [("packed", length, pack_features(features, length)) for length in lengths]
    rows = []
    for layout, length, items in layouts:
        batches = make_batches(items, args.batch_size, args.steps, collate)
        seconds, tokens = time_steps(model, batches, args.warmup)
        rows.append(
            {
                "layout": layout if length is None else f"packed to {length}",
                "rows_per_step": args.batch_size,
                "row_tokens": batches[0]["input_ids"].shape[1],
                "real_tokens_per_step": tokens,
                "step_s": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds),
            }
        )
    for row in rows:
        row["vs_unpacked"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    mean_length = statistics.mean(len(feature["input_ids"]) for feature in features)
    print(
        f"tiny-llama (hidden size {model.config.hidden_size}), {len(features)} maths examples "
        f"(mean {mean_length:.0f} tokens); torch threads {torch.get_num_threads()}"
    )
    header = list(rows[0])
    print(markdown_table(header, [[str(row[key]) for key in header] for row in rows]))
    result = {"bench": "packing", "threads": args.threads, "rows": rows}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
