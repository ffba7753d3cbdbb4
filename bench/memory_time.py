"""Memory and step time of LISA against FT, LoRA, BAdam, an LMFlow-style callback and a static freeze.

Runs every method on one model, one seed and the same batches, each in a fresh Python process
(bench.workload), and prints Markdown tables: median step time and its ratio to full
fine-tuning in the same run, exact bytes of parameters, grads and optimizer state at the end
(lisa.memory), the largest optimizer state seen, the least state AdamW needs for the trained
set, peak process RSS, and on CUDA torch.cuda.max_memory_allocated. Then the issue 6 targets.

    .venv/bin/python -m bench.memory_time                       # tiny Llama, ~15 min on 1 thread
    .venv/bin/python -m bench.memory_time --model smollm2-135m --steps 12 --seq-len 128
    .venv/bin/python -m bench.memory_time --quick               # smoke test, ~1 min
    .venv/bin/python -m bench.memory_time --quick --in-process  # the same in ~20 s (see below)
    .venv/bin/python -m bench.memory_time --device cuda         # bfloat16 on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.workload import add_workload_arguments

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
# Issue 6 targets.
TIME_VS_FT_TARGET = 0.78
TIME_VS_STATIC_TOLERANCE = 0.05


def plan_methods(
    gammas: list[int], policies: list[str], ranks: list[int]
) -> list[tuple[str, list[str]]]:
    """(label, worker arguments) for every method, in run order.

    Static freezes come after the LISA run of the same gamma: they train its first draw.
    """
    plan: list[tuple[str, list[str]]] = [("ft", ["--method", "ft"])]
    plan += [(f"lora-r{r}", ["--method", "lora", "--rank", str(r)]) for r in ranks]
    for gamma in gammas:
        plan += [
            (
                f"lisa-g{gamma}-{policy}",
                ["--method", "lisa", "--gamma", str(gamma), "--state-policy", policy],
            )
            for policy in policies
        ]
        plan.append((f"static-g{gamma}", ["--method", "static", "--gamma", str(gamma)]))
    plan.append((f"lmflow-g{gammas[0]}", ["--method", "lmflow", "--gamma", str(gammas[0])]))
    plan.append(("badam", ["--method", "badam"]))
    return plan


def run_one(
    label: str,
    method_args: list[str],
    common: list[str],
    threads: int,
    workdir: Path,
    in_process: bool = False,
) -> dict:
    """Run one method in a fresh interpreter (or in this one) and return its result dict."""
    result_file = workdir / f"{label}.json"
    argv = [*common, *method_args, "--label", label, "--result-file", str(result_file)]
    if in_process:
        from bench import workload

        workload.main(argv)
        return json.loads(result_file.read_text())
    command = [sys.executable, "-m", "bench.workload", *argv]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def static_blocks(results: dict[str, dict], gamma: int, policies: list[str]) -> list[int]:
    """The first active set of the LISA run with this gamma (every policy draws the same)."""
    lisa = results[f"lisa-g{gamma}-{policies[0]}"]
    return list(lisa["trace"][0]["active_blocks"])


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Pipe table with right-aligned numbers."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def time_memory_table(results: dict[str, dict]) -> str:
    """Table 1: step time and memory per method."""
    ft_time = results["ft"]["median_step_seconds"]
    ft_wall = results["ft"]["median_wall_seconds"]
    cuda = any(r["cuda_max_memory_allocated"] is not None for r in results.values())
    basis = results["ft"]["timing"]
    header = ["method", "trains now", f"median step s ({basis})", "x FT", "wall s", "wall x FT"]
    header += ["params MiB", "grads MiB"]
    header += ["state MiB", "max state MiB", "min state MiB", "extra MiB", "peak RSS MiB"]
    header += ["CUDA max alloc MiB"] if cuda else []
    rows = []
    for label, r in results.items():
        blocks = r["trace"][-1]["active_blocks"]
        trains = (
            "all" if r["kind"] == "ft" else "adapters" if r["kind"] == "lora" else f"E+H+{blocks}"
        )
        row = [
            label,
            trains.replace(" ", ""),
            f"{r['median_step_seconds']:.3f}",
            f"{r['median_step_seconds'] / ft_time:.2f}",
            f"{r['median_wall_seconds']:.3f}",
            f"{r['median_wall_seconds'] / ft_wall:.2f}",
            _mib(r["parameter_bytes"]),
            _mib(r["grad_bytes"]),
            _mib(r["optimizer_state_bytes"]),
            _mib(r["max_state_bytes"]),
            _mib(r["minimum_state_bytes"]),
            _mib(r["extra_bytes"]),
            _mib(r["peak_rss_bytes"]),
        ]
        row += [_mib(r["cuda_max_memory_allocated"])] if cuda else []
        rows.append(row)
    return markdown_table(header, rows)


def exact_state_table(results: dict[str, dict]) -> str:
    """Table 2: optimizer state in exact bytes against the minimum for the trained set."""
    header = ["method", "state bytes (end)", "max state bytes", "minimum bytes", "max / minimum"]
    rows = [
        [
            label,
            f"{r['optimizer_state_bytes']:,}",
            f"{r['max_state_bytes']:,}",
            f"{r['minimum_state_bytes']:,}",
            f"{r['state_over_minimum_max']:.2f}",
        ]
        for label, r in results.items()
    ]
    return markdown_table(header, rows)


def period_ends(result: dict) -> list[dict]:
    """Trace rows at the last step of each switching period (where state is largest)."""
    interval = result["settings"]["interval"]
    trace = result["trace"]
    return [row for row in trace if (row["step"] + 1) % interval == 0 or row is trace[-1]]


def growth_table(results: dict[str, dict]) -> str:
    """Table 3: state / minimum at the end of each period, for the switching methods."""
    switching = {k: r for k, r in results.items() if r["kind"] in ("lisa", "lmflow", "badam")}
    periods = max(len(period_ends(r)) for r in switching.values())
    header = ["method", *[f"period {i + 1}" for i in range(periods)]]
    rows = []
    for label, r in switching.items():
        ends = period_ends(r)
        cells = [f"{row['state_bytes'] / row['minimum_state_bytes']:.2f}" for row in ends]
        rows.append([label, *cells, *["-"] * (periods - len(cells))])
    return markdown_table(header, rows)


def check_targets(results: dict[str, dict], gammas: list[int]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for issue 6's targets that this run can judge."""
    checks = []
    for label, r in results.items():
        if r["kind"] == "lisa" and r["settings"]["state_policy"] in ("drop", "reset"):
            exact = all(row["state_bytes"] == row["minimum_state_bytes"] for row in r["trace"])
            checks.append(
                (
                    f"{label}: state == minimum after every step (1.00x)",
                    exact,
                    f"max {r['state_over_minimum_max']:.4f}x over {len(r['trace'])} steps",
                )
            )
    gamma = gammas[0]
    lisa = results.get(f"lisa-g{gamma}-drop")
    if lisa is not None:
        ratio = lisa["median_step_seconds"] / results["ft"]["median_step_seconds"]
        checks.append(
            (
                f"lisa-g{gamma}-drop step time <= {TIME_VS_FT_TARGET}x FT",
                ratio <= TIME_VS_FT_TARGET,
                f"{ratio:.3f}x",
            )
        )
        static = results.get(f"static-g{gamma}")
        if static is not None:
            over = lisa["median_step_seconds"] / static["median_step_seconds"]
            checks.append(
                (
                    f"lisa-g{gamma}-drop step time within {TIME_VS_STATIC_TOLERANCE:.0%} of static-g{gamma}",
                    over <= 1 + TIME_VS_STATIC_TOLERANCE,
                    f"{over:.3f}x",
                )
            )
        lora = results.get("lora-r128")
        if lora is not None:
            checks.append(
                (
                    f"lisa-g{gamma}-drop peak RSS below lora-r128",
                    lisa["peak_rss_bytes"] < lora["peak_rss_bytes"],
                    f"{_mib(lisa['peak_rss_bytes'])} vs {_mib(lora['peak_rss_bytes'])} MiB",
                )
            )
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument(
        "--gammas", type=int, nargs="+", default=None, help="default 2 4 (quick: 2)"
    )
    parser.add_argument("--policies", nargs="+", default=["drop", "reset", "keep"])
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=[8, 128])
    parser.add_argument(
        "--only", nargs="+", default=None, help="run only these labels (ft always runs)"
    )
    parser.add_argument("--json-out", type=Path, default=None, help="write every result here")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every method in this interpreter instead of a fresh one each: the imports "
        "(~9 s a process on 2 cores) are paid once, the step times and exact bytes are the "
        "same, but the peak RSS column is this process's peak so far, not the method's alone "
        "(for smoke tests)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # Small enough for a smoke test, long enough for three switching periods.
        args.batch_size, args.seq_len, args.steps, args.warmup = 2, 32, 12, 1
    if args.gammas is None:
        args.gammas = [2] if args.quick else [2, 4]
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup={args.warmup} must be >= 0 and below --steps={args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    common = [
        "--model",
        args.model,
        "--num-blocks",
        str(args.num_blocks),
        "--batch-size",
        str(args.batch_size),
    ]
    common += [
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    common += [
        "--interval",
        str(args.interval),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    common += ["--device", args.device] + (["--quick"] if args.quick else [])

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lisa-bench-") as tmp:
        for label, method_args in plan_methods(args.gammas, args.policies, args.lora_ranks):
            if args.only is not None and label != "ft" and label not in args.only:
                continue
            if label.startswith("static-g"):
                gamma = int(label.removeprefix("static-g"))
                if f"lisa-g{gamma}-{args.policies[0]}" not in results:
                    continue
                blocks = static_blocks(results, gamma, args.policies)
                method_args = [*method_args, "--blocks", *map(str, blocks)]
            print(f"running {label} ...", file=sys.stderr, flush=True)
            results[label] = run_one(
                label, method_args, common, args.threads, Path(tmp), args.in_process
            )
    wall = time.perf_counter() - started

    first = results["ft"]
    print(
        f"# {args.model} ({first['num_parameters']:,} parameters), {first['dtype']}, device {args.device}, "
        f"batch {args.batch_size} x {args.seq_len}, {args.steps} steps ({args.warmup} warm-up left out "
        f"of the median), K = {args.interval}, seed {args.seed}, torch threads {first['threads']}"
    )
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, torch {first['torch']}, wall time {wall:.0f} s"
    )
    clock = "process CPU time" if first["timing"] == "cpu" else "wall time (synchronized)"
    print(f"# step times: median {clock} per step; ratios and targets use it")
    if args.in_process:
        print("# --in-process: every method ran in this process, so peak RSS is not per method")
    print()
    print("## Step time and memory\n")
    print(time_memory_table(results) + "\n")
    print("## Optimizer state, exact bytes\n")
    print(exact_state_table(results) + "\n")
    print("## Optimizer state / minimum at the end of each period\n")
    print(growth_table(results) + "\n")
    print("## Targets (issue 6)\n")
    checks = check_targets(results, args.gammas)
    for target, met, measured in checks:
        print(f"- [{'met' if met else 'MISSED'}] {target}: {measured}")
    if args.json_out is not None:
        meta = {"argv": sys.argv, "wall_seconds": wall, "cpus": os.cpu_count()}
        meta["targets"] = [{"target": t, "met": m, "measured": v} for t, m, v in checks]
        args.json_out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
