"""One benchmark run of one method in this process: model, batches, timed steps, memory figures.

bench.memory_time starts this once per method, each in a fresh interpreter so that peak RSS
(and on CUDA max_memory_allocated) belongs to that method alone. By hand:

    .venv/bin/python -m bench.workload --method lisa --gamma 2 --state-policy drop \
        --steps 20 --result-file /tmp/lisa.json

Every method sees the same model initialisation and the same seeded batches of random token
ids (labels = inputs). A step is: begin_step (switching) -> zero_grad -> forward -> backward ->
optimizer step, all inside the timers; the byte counts are taken after the timers stop. Two
clocks: wall time and process CPU time (time.process_time). On CPU with one thread the CPU time
is the step's cost without the time slices that other jobs on a shared machine take, so the
median step time is CPU time there; on CUDA it is wall time after torch.cuda.synchronize.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.methods import build_method, minimum_state_bytes, state_bytes
from lisa.memory import memory_report
from lisa.validation import check_int
from lisa_apps.tiny import build_tiny_model

BENCH_MODEL = "bench-llama"


@dataclass(frozen=True)
class ModelShape:
    """Shape of the benchmark's random Llama (issue 6: 12 x 512, MLP 1376, vocab 8192, untied)."""

    num_blocks: int = 12
    hidden: int = 512
    intermediate: int = 1376
    vocab: int = 8192
    heads: int = 8

    def __post_init__(self) -> None:
        for name in ("num_blocks", "hidden", "intermediate", "vocab", "heads"):
            check_int(name, getattr(self, name))
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")


QUICK_SHAPE = ModelShape(num_blocks=4, hidden=64, intermediate=160, vocab=512, heads=4)


def build_bench_llama(shape: ModelShape, *, max_positions: int, seed: int) -> nn.Module:
    """Random untied LlamaForCausalLM of `shape`, initialised from `seed` (global RNG untouched)."""
    return build_tiny_model(
        "tiny-llama", num_blocks=shape.num_blocks, hidden=shape.hidden,
        intermediate=shape.intermediate, vocab_size=shape.vocab, heads=shape.heads,
        kv_heads=shape.heads, tie=False, max_positions=max(max_positions, 32), seed=seed,
    )  # fmt: skip


def load_bench_model(name: str, shape: ModelShape, *, max_positions: int, seed: int) -> nn.Module:
    """The model by name: "bench-llama" (random, `shape`) or anything lisa_apps.models.load_model takes."""
    if name == BENCH_MODEL:
        return build_bench_llama(shape, max_positions=max_positions, seed=seed)
    from lisa_apps.models import load_model

    model, _ = load_model(name, seed=seed)
    return model


def make_batches(
    num_batches: int, batch_size: int, seq_len: int, vocab: int, seed: int
) -> list[torch.Tensor]:
    """Seeded random token ids, one (batch_size, seq_len) int64 tensor per step."""
    rng = np.random.Generator(np.random.PCG64(seed))
    tokens = rng.integers(0, vocab, size=(num_batches, batch_size, seq_len), dtype=np.int64)
    return [torch.from_numpy(batch) for batch in tokens]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    """Resident set size now (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(args: argparse.Namespace) -> dict:
    """Train one method for args.steps steps and return its figures as a JSON-able dict."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = QUICK_SHAPE if args.quick else ModelShape(num_blocks=args.num_blocks)

    model = load_bench_model(args.model, shape, max_positions=args.seq_len, seed=args.seed)
    model.to(device=device, dtype=dtype)
    model.train()
    num_parameters = sum(p.numel() for p in model.parameters())  # before LoRA adds adapters
    vocab = model.get_input_embeddings().weight.shape[0]
    batches = [
        b.to(device)
        for b in make_batches(args.steps, args.batch_size, args.seq_len, vocab, args.seed)
    ]

    method = build_method(
        args.method,
        gamma=args.gamma,
        interval=args.interval,
        state_policy=args.state_policy,
        rank=args.rank,
        blocks=tuple(args.blocks),
        seed=args.seed,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_bytes()
    trained = method.prepare(model)

    step_seconds: list[float] = []
    step_cpu_seconds: list[float] = []
    trace: list[dict] = []
    for step, batch in enumerate(batches):
        _synchronize(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        method.begin_step(step)
        method.zero_grad()
        loss = trained(input_ids=batch, labels=batch).loss
        loss.backward()
        method.step()
        _synchronize(device)
        step_seconds.append(time.perf_counter() - start)
        step_cpu_seconds.append(time.process_time() - start_cpu)
        trace.append(
            {
                "step": step,
                "loss": float(loss.detach()),
                "active_blocks": method.active_blocks(),
                "state_bytes": state_bytes(method),
                "minimum_state_bytes": minimum_state_bytes(method),
            }
        )

    report = memory_report(trained, method.state_optimizer()).set_index("group")
    total = report.loc["total"]
    median_wall = statistics.median(step_seconds[args.warmup :])
    median_cpu = statistics.median(step_cpu_seconds[args.warmup :])
    result = {
        "method": args.label or args.method,
        "kind": args.method,
        "settings": {
            "gamma": args.gamma,
            "interval": args.interval,
            "state_policy": args.state_policy,
            "rank": args.rank,
            "blocks": list(args.blocks),
        },
        "model": args.model,
        "shape": asdict(shape) if args.model == BENCH_MODEL else None,
        "num_parameters": num_parameters,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": [args.batch_size, args.seq_len],
        "step_seconds": step_seconds,
        "step_cpu_seconds": step_cpu_seconds,
        "median_wall_seconds": median_wall,
        "median_cpu_seconds": median_cpu,
        # On a shared CPU, one-thread process time is what the step costs without the time
        # slices other jobs take; it equals wall time on an idle machine. GPUs: wall time.
        "timing": "cpu" if device.type == "cpu" else "wall",
        "median_step_seconds": median_cpu if device.type == "cpu" else median_wall,
        "parameter_bytes": int(total["parameter_bytes"]),
        "grad_bytes": int(total["grad_bytes"]),
        "optimizer_state_bytes": int(total["optimizer_state_bytes"]),
        "extra_bytes": method.extra_bytes(),
        "max_state_bytes": max(row["state_bytes"] for row in trace),
        "minimum_state_bytes": trace[-1]["minimum_state_bytes"],
        "trained_tensor_count": len(method.trained_tensors()),
        "state_over_minimum_max": max(
            row["state_bytes"] / row["minimum_state_bytes"] for row in trace
        ),
        "trace": trace,
        "rss_before_method_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_max_memory_allocated": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    return result


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the worker and the scripts that start it."""
    parser.add_argument("--model", default=BENCH_MODEL, help="bench-llama or a lisa_apps.models name")
    parser.add_argument("--num-blocks", type=int, default=12, help="blocks of bench-llama")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    parser.add_argument("--interval", type=int, default=5, help="K: steps per switching period")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu (float32) or cuda (bfloat16)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny 4-block model for smoke tests (bench-llama)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--method", required=True, help="ft, lora, lisa, lmflow, badam or static")
    parser.add_argument("--label", default=None, help="name of the row in the tables")
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--state-policy", default="drop")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--blocks", type=int, nargs="*", default=[])
    parser.add_argument("--result-file", required=True, type=Path)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup={args.warmup} must be >= 0 and below --steps={args.steps}")
    result = run_workload(args)
    args.result_file.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
