"""Training throughput with and without --packing: real (non-padding) tokens per second.

Tokenises generated maths problems (lengths vary, as users' sets do) with the chat template of
``--model`` (default the tiny Llama), then times forward + backward + AdamW steps on the same
examples two ways: unpacked batches of ``--batch-size`` examples padded to the longest, and
packed rows of up to ``--max-length`` tokens (lisa_apps.data.pack_features), ``--batch-size``
rows per step, padded to the longest row. Both count only the tokens of examples, so padding is
cost without credit; the padding column is the fraction of the batch's positions that are
padding. Each layout trains its own copy of the same weights, and the layouts take turns step
by step, so load on the machine falls on all of them alike and their ratio is measured side by
side. torch's CPU threads are pinned (``--threads``, default 1, as in bench.memory_time) and
reported, since the ratio depends on them.

    .venv/bin/python -m bench.packing           # ~2 min on a shared 2-core machine
    .venv/bin/python -m bench.packing --model smollm2-135m --max-lengths 512 --steps 6
    .venv/bin/python -m bench.packing --quick   # under a minute
"""

from __future__ import annotations

import argparse
import copy
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


def make_batches(features: list[dict], batch_size: int, steps: int, collate) -> list[dict]:
    batches = []
    for step in range(steps):
        start = (step * batch_size) % max(len(features) - batch_size + 1, 1)
        rows = features[start : start + batch_size]
        batch = collate(rows)
        batch["real_tokens"] = sum(len(row["input_ids"]) for row in rows)
        batches.append(batch)
    return batches


def time_side_by_side(models: list, layouts: list[list[dict]], warmup: int) -> list[list[float]]:
    """Seconds of each timed step, per layout; the layouts take turns, one step each.

    Taking turns step by step (rather than all steps of one layout, then the next) spreads
    whatever else the machine is doing over every layout alike, so their ratio holds even
    when the absolute times drift.
    """
    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-4) for model in models]
    seconds: list[list[float]] = [[] for _ in layouts]
    for index in range(len(layouts[0])):
        for which, (model, optimizer, batches) in enumerate(
            zip(models, optimizers, layouts, strict=True)
        ):
            batch = batches[index]
            start = time.perf_counter()
            loss = model(**model_inputs(batch), labels=batch["labels"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if index >= warmup:
                seconds[which].append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="a lisa_apps.models name")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-lengths", default="512,1024", help="packed row lengths to time")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="64 examples, 4 steps, rows of 512")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    lengths = [int(part) for part in args.max_lengths.split(",")]
    if args.quick:
        args.examples, args.steps, args.warmup, lengths = 64, 4, 1, [512]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model.train()
    features = tokenize_examples(
        make_math_problems(args.examples, seed=0), tokenizer, max_length=min(lengths)
    )
    collate = DataCollator(tokenizer)
    layouts = [("unpacked", None, features)]
    layouts += [("packed", length, pack_features(features, length)) for length in lengths]
    batches = [make_batches(items, args.batch_size, args.steps, collate) for _, _, items in layouts]
    # One copy of the same initial weights per layout, each with its own AdamW.
    models = [model] + [copy.deepcopy(model) for _ in layouts[1:]]
    seconds = time_side_by_side(models, batches, args.warmup)
    rows = []
    for (layout, length, _), timed, steps in zip(layouts, seconds, batches, strict=True):
        timed_steps = steps[args.warmup :]
        real = sum(batch["real_tokens"] for batch in timed_steps)
        positions = sum(batch["input_ids"].numel() for batch in timed_steps)
        step_s = statistics.median(timed)
        tokens = round(real / len(timed_steps))
        rows.append(
            {
                "layout": layout if length is None else f"packed to {length}",
                "rows_per_step": args.batch_size,
                "row_tokens": round(positions / len(timed_steps) / args.batch_size),
                "real_tokens_per_step": tokens,
                "padding": round(1 - real / positions, 3),
                "step_s": round(step_s, 4),
                "tokens_per_s": round(tokens / step_s),
            }
        )
    for row in rows:
        row["vs_unpacked"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    mean_length = statistics.mean(len(feature["input_ids"]) for feature in features)
    print(
        f"{args.model} (hidden size {model.config.hidden_size}), {len(features)} maths examples "
        f"(mean {mean_length:.0f} tokens); torch threads pinned to {torch.get_num_threads()}; "
        f"median of {args.steps - args.warmup} steps after {args.warmup} warm-up"
    )
    header = list(rows[0])
    print(markdown_table(header, [[str(row[key]) for key in header] for row in rows]))
    result = {"bench": "packing", "model": args.model, "threads": args.threads, "rows": rows}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
