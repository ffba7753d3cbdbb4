"""Cost of recording per-layer norms every step (diagnostics.recorder.NormRecorder) vs step time.

Trains the benchmark Llama with full fine-tuning, LoRA r8 (the two probe methods) and LISA
(gamma 2, K 5) on the same seeded batches. After every timed training step each recorder
records the model, with its own timer, writing its CSV (append + fsync) as the probes do.
The overhead is median(record seconds) / median(step seconds) over the steps after warm-up, on
both clocks (wall and process CPU time): recording runs between steps, so this is what it adds
to each step, without the noise of differencing two separate runs on a shared machine.

Recorders: "weight/l2" (what `lisa diagnose` probes record by default) and
"all" (kinds weight, trainable and delta, reductions l2 and rms).

    .venv/bin/python -m bench.recorder_overhead           # tiny Llama 12 x 512, ~2 min
    .venv/bin/python -m bench.recorder_overhead --quick   # tiny model, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.memory_time import markdown_table
from bench.methods import build_method
from bench.workload import QUICK_SHAPE, ModelShape, build_bench_llama, make_batches
from diagnostics.recorder import NormRecorder

OVERHEAD_TARGET = 0.02
RECORDERS = {
    "weight/l2": {"kinds": ("weight",), "reduce": "l2"},
    "all": {"kinds": ("weight", "trainable", "delta"), "reduce": ("l2", "rms")},
}
METHODS = (("ft", {}), ("lora-r8", {"rank": 8}), ("lisa-g2", {"gamma": 2, "state_policy": "drop"}))


def measure(
    label: str, options: dict, shape: ModelShape, args: argparse.Namespace, folder: Path
) -> dict:
    """Train `label` for args.steps steps, recording after each; return the timings."""
    model = build_bench_llama(shape, max_positions=args.seq_len, seed=args.seed)
    model.train()
    method = build_method(label.split("-")[0], interval=args.interval, seed=args.seed, **options)
    trained = method.prepare(model)
    recorders = {
        name: NormRecorder(
            **settings, method=label, run=f"bench-{label}", path=folder / f"{label}-{i}.csv"
        )
        for i, (name, settings) in enumerate(RECORDERS.items())
    }
    batches = make_batches(args.steps, args.batch_size, args.seq_len, shape.vocab, args.seed)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    step_seconds: dict[str, list[float]] = {clock: [] for clock in clocks}
    record_seconds = {name: {clock: [] for clock in clocks} for name in recorders}
    for step, batch in enumerate(batches):
        start = {clock: read() for clock, read in clocks.items()}
        method.begin_step(step)
        method.zero_grad()
        trained(input_ids=batch, labels=batch).loss.backward()
        method.step()
        for clock, read in clocks.items():
            step_seconds[clock].append(read() - start[clock])
        for name, recorder in recorders.items():
            start = {clock: read() for clock, read in clocks.items()}
            recorder.record(step, trained)
            for clock, read in clocks.items():
                record_seconds[name][clock].append(read() - start[clock])

    def median(values: list[float]) -> float:
        return statistics.median(values[args.warmup :])

    return {
        "method": label,
        "median_step_seconds": {clock: median(step_seconds[clock]) for clock in clocks},
        "recorders": {
            name: {
                "median_record_seconds": {clock: median(times[clock]) for clock in clocks},
                "overhead": {
                    clock: median(times[clock]) / median(step_seconds[clock]) for clock in clocks
                },
                "rows_per_record": len(recorders[name].table) // args.steps,
            }
            for name, times in record_seconds.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny 4-block model, batch 2 x 32")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.steps, args.warmup = 2, 32, 6, 1
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup={args.warmup} must be >= 0 and below --steps={args.steps}")
    torch.set_num_threads(1)
    shape = QUICK_SHAPE if args.quick else ModelShape()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lisa-recorder-bench-") as tmp:
        results = [measure(label, options, shape, args, Path(tmp)) for label, options in METHODS]
    wall = time.perf_counter() - started

    print(
        f"# norm recording every step: bench-llama {shape.num_blocks} x {shape.hidden}, float32, batch "
        f"{args.batch_size} x {args.seq_len}, {args.steps} steps ({args.warmup} warm-up left out), "
        f"1 thread; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; wall {wall:.0f} s\n"
    )
    header = ["method", "step s (wall)", "step s (cpu)", "recorder", "rows/record"]
    header += ["record s (wall)", "record s (cpu)", "overhead (wall)", "overhead (cpu)"]
    rows = [
        [
            r["method"],
            f"{r['median_step_seconds']['wall']:.3f}",
            f"{r['median_step_seconds']['cpu']:.3f}",
            name,
            str(figures["rows_per_record"]),
            f"{figures['median_record_seconds']['wall']:.4f}",
            f"{figures['median_record_seconds']['cpu']:.4f}",
            f"{figures['overhead']['wall']:.2%}",
            f"{figures['overhead']['cpu']:.2%}",
        ]
        for r in results
        for name, figures in r["recorders"].items()
    ]
    print(markdown_table(header, rows) + "\n")
    # Judged on the worse of the two clocks: CPU time misses fsync waits, wall time counts
    # other jobs' time slices.
    worst = max(max(r["recorders"]["weight/l2"]["overhead"].values()) for r in results)
    met = worst <= OVERHEAD_TARGET
    print(
        f"- [{'met' if met else 'MISSED'}] recording weight/l2 norms every step <= "
        f"{OVERHEAD_TARGET:.0%} of step time: worst {worst:.2%} (worse clock, worst method)"
    )
    if args.json_out is not None:
        payload = {"argv": sys.argv, "wall_seconds": wall, "results": results, "target_met": met}
        args.json_out.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
