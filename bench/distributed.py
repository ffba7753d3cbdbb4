"""Per-rank memory of FT and LISA under DDP and FSDP2: parameters, grads, optimizer state, buckets.

Starts --nproc ranks (torch.multiprocessing; gloo on the CPU, NCCL on CUDA, one GPU per rank),
fresh ones for each setting, and on every rank trains the benchmark Llama (hidden 512, MLP 1376, vocab 8192, untied; 12
blocks by default) with each setting below for a few switching periods, on random tokens. After
the last optimizer step, before grads are released, each rank reports the exact bytes it holds
(lisa.memory: DTensor parameters, grads and state count the rank's local shard), DDP's gradient
buckets (``bucket_sizes`` of DDP's logging data: one bucket slot per parameter that required
grad when DDP was built), its peak memory (peak RSS on the CPU, max_memory_allocated on CUDA)
and the median step time.

Settings: FT and LISA (gamma 2, K 5, state policy drop) under DDP and FSDP2
(lisa.distributed.shard_model), plus FT under DDP with find_unused_parameters=True to price
that flag (LISA under DDP needs it; FT does not). Step times of separate runs are noisy on a
shared machine, so the flag's cost is also timed with two DDP copies stepping in turns.

    .venv/bin/python -m bench.distributed --nproc 2            # 12 x 512 on 2 CPU ranks, ~3 min
    .venv/bin/python -m bench.distributed --nproc 2 --quick    # 4 tiny blocks, seconds
    .venv/bin/python -m bench.distributed --nproc 8 --blocks 32 --hidden 4096 --device cuda

On the CPU every rank runs one torch thread (set here), so 2 ranks need 2 free cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.memory_time import markdown_table
from bench.workload import QUICK_SHAPE, ModelShape, build_bench_llama, make_batches

SETTINGS = (
    # (label, engine, method, find_unused_parameters)
    ("ddp-ft", "ddp", "ft", False),
    ("ddp-ft-unused", "ddp", "ft", True),
    ("ddp-lisa", "ddp", "lisa", True),
    ("fsdp2-ft", "fsdp2", "ft", None),
    ("fsdp2-lisa", "fsdp2", "lisa", None),
)
MIB = 2**20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_setting(
    label: str, engine: str, method: str, find_unused: bool | None, args, device
) -> dict:
    """Train one setting on this rank; return what this rank holds after the last step."""
    from torch.nn.parallel import DistributedDataParallel

    from diagnostics.runtime import PeakMemory
    from lisa import Lisa, LisaConfig, memory_report
    from lisa.distributed import shard_model

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    with PeakMemory(device) as peak:
        model = build_bench_llama(args.shape, max_positions=args.seq_len, seed=args.seed)
        model.to(device).train()
        forward, bucket_bytes = model, 0
        if engine == "fsdp2":
            shard_model(model)
        else:
            forward = DistributedDataParallel(
                model,
                device_ids=None if device.type == "cpu" else [device],
                find_unused_parameters=find_unused,
            )
            sizes = str(forward._get_ddp_logging_data().get("bucket_sizes", ""))
            bucket_bytes = sum(int(s) for s in sizes.split(",") if s.strip())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        lisa = None
        if method == "lisa":
            config = LisaConfig(gamma=args.gamma, interval=args.interval, seed=args.seed)
            lisa = Lisa(forward, optimizer, config)
        # Every rank its own tokens (a data-parallel run), the same count of them.
        batches = make_batches(args.steps, 1, args.seq_len, args.shape.vocab, args.seed + rank)
        seconds = []
        for step, batch in enumerate(batches):
            start = time.perf_counter()
            if lisa is not None:
                lisa.begin_step(step)
            batch = batch.to(device)
            forward(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            if step < len(batches) - 1:
                optimizer.zero_grad(set_to_none=True)
        total = memory_report(model, optimizer).set_index("group").loc["total"]
        figures = {
            "label": label,
            "rank": rank,
            "world": world,
            "num_parameters": int(total["num_parameters"]),
            "parameter_bytes": int(total["parameter_bytes"]),
            "grad_bytes": int(total["grad_bytes"]),
            "optimizer_state_bytes": int(total["optimizer_state_bytes"]),
            "ddp_bucket_bytes": bucket_bytes,
            # The first steps build buckets and state; the rest are the steady state.
            "median_step_seconds": statistics.median(seconds[2:] or seconds),
            "active_blocks": list(lisa.active_blocks) if lisa is not None else None,
        }
        del forward, model, optimizer, lisa
    figures["peak_memory_bytes"] = peak.peak_bytes
    figures["peak_memory_measure"] = peak.measure
    return figures


def measure_find_unused_cost(args, device) -> dict:
    """Median FT step under DDP without and with find_unused_parameters, steps interleaved.

    Two copies of the model, one wrapped each way, take turns step by step (which goes first
    alternates), so that load from other jobs falls on both alike.
    """
    from torch.nn.parallel import DistributedDataParallel

    rank = torch.distributed.get_rank()
    runs = {}
    for find_unused in (False, True):
        model = build_bench_llama(args.shape, max_positions=args.seq_len, seed=args.seed)
        model.to(device).train()
        wrapped = DistributedDataParallel(
            model,
            device_ids=None if device.type == "cpu" else [device],
            find_unused_parameters=find_unused,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        runs[find_unused] = (wrapped, optimizer, [])
    batches = make_batches(args.steps, 1, args.seq_len, args.shape.vocab, args.seed + rank)
    for step, batch in enumerate(batches):
        batch = batch.to(device)
        for find_unused in (step % 2 == 0, step % 2 != 0):
            wrapped, optimizer, seconds = runs[find_unused]
            start = time.perf_counter()
            wrapped(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return {
        "rank": rank,
        "median_step_seconds": {
            str(flag).lower(): statistics.median(seconds[2:] or seconds)
            for flag, (_, _, seconds) in runs.items()
        },
    }


def cost_body(rank: int, world: int, port: int, args, folder: str) -> None:
    """One rank of the interleaved find_unused_parameters measurement."""
    device = _join(rank, world, port, args)
    figures = measure_find_unused_cost(args, device)
    Path(folder, f"find-unused-rank{rank}.json").write_text(json.dumps(figures))
    torch.distributed.destroy_process_group()


def _join(rank: int, world: int, port: int, args) -> torch.device:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    backend = "gloo"
    if args.device == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    torch.distributed.init_process_group(backend, rank=rank, world_size=world)
    return device


def rank_body(rank: int, world: int, port: int, args, folder: str, settings: list[int]) -> None:
    """One rank: join the group, measure the given settings, save this rank's figures."""
    device = _join(rank, world, port, args)
    for setting in settings:
        label, engine, method, find_unused = SETTINGS[setting]
        figures = measure_setting(label, engine, method, find_unused, args, device)
        Path(folder, f"{label}-rank{rank}.json").write_text(json.dumps(figures))
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def tables(results: list[list[dict]]) -> str:
    """A per-rank bytes table and a per-setting summary with ratios to DDP FT."""
    header = ["setting", "rank", "parameters MiB", "grads MiB", "DDP buckets MiB"]
    header += ["optimizer state MiB", "held MiB", "peak MiB", "s/step"]
    rows = []
    for per_rank in zip(*results, strict=True):
        for figures in per_rank:
            held = held_bytes(figures)
            rows.append(
                [
                    figures["label"],
                    str(figures["rank"]),
                    f"{figures['parameter_bytes'] / MIB:,.1f}",
                    f"{figures['grad_bytes'] / MIB:,.1f}",
                    f"{figures['ddp_bucket_bytes'] / MIB:,.1f}",
                    f"{figures['optimizer_state_bytes'] / MIB:,.1f}",
                    f"{held / MIB:,.1f}",
                    f"{figures['peak_memory_bytes'] / MIB:,.0f}",
                    f"{figures['median_step_seconds']:.3f}",
                ]
            )
    return markdown_table(header, rows)


def held_bytes(figures: dict) -> int:
    """Parameters + grads + DDP buckets + optimizer state held by one rank."""
    return (
        figures["parameter_bytes"] + figures["grad_bytes"] + figures["ddp_bucket_bytes"]
        + figures["optimizer_state_bytes"]
    )  # fmt: skip


def summary(results: list[list[dict]]) -> str:
    """Rank 0's bytes per setting relative to DDP FT, and step time relative to it."""
    by_label = {figures["label"]: figures for figures in results[0]}
    base = by_label["ddp-ft"]
    header = ["setting", "held / DDP FT", "state / DDP FT", "s/step / DDP FT"]
    rows = [
        [
            label,
            f"{held_bytes(figures) / held_bytes(base):.3f}",
            f"{figures['optimizer_state_bytes'] / base['optimizer_state_bytes']:.3f}",
            f"{figures['median_step_seconds'] / base['median_step_seconds']:.2f}",
        ]
        for label, figures in by_label.items()
    ]
    return markdown_table(header, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--blocks", type=int, default=None, help="default 12 (quick: 4)")
    parser.add_argument("--hidden", type=int, default=None, help="default 512 (quick: 64)")
    parser.add_argument("--gamma", type=int, default=2)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="default 12: three draws")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--quick", action="store_true", help="4 tiny blocks (hidden 64)")
    parser.add_argument(
        "--skip-find-unused-cost",
        action="store_true",
        help="skip the interleaved timing of DDP's find_unused_parameters",
    )
    parser.add_argument(
        "--same-processes",
        action="store_true",
        help="every setting in one set of ranks: faster, but a peak then includes what earlier "
        "settings left in the process (the byte counts stay exact)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        parser.error(f"--nproc {args.nproc} needs as many GPUs; {torch.cuda.device_count()} seen")
    base = QUICK_SHAPE if args.quick else ModelShape()
    hidden = args.hidden or base.hidden
    args.shape = ModelShape(
        num_blocks=args.blocks or base.num_blocks,
        hidden=hidden,
        intermediate=base.intermediate * hidden // base.hidden,
        vocab=base.vocab,
        heads=base.heads,
    )
    return args


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lisa-bench-distributed-") as folder:
        # Fresh processes per setting, so that each peak is that setting's alone.
        groups = [list(range(len(SETTINGS)))]
        if not args.same_processes:
            groups = [[setting] for setting in range(len(SETTINGS))]
        for settings in groups:
            mp.start_processes(
                rank_body, args=(args.nproc, _free_port(), args, folder, settings),
                nprocs=args.nproc, start_method="spawn",
            )  # fmt: skip
        results = [
            [
                json.loads(Path(folder, f"{label}-rank{rank}.json").read_text())
                for label, *_ in SETTINGS
            ]
            for rank in range(args.nproc)
        ]
        cost = None
        if not args.skip_find_unused_cost:
            mp.start_processes(
                cost_body, args=(args.nproc, _free_port(), args, folder), nprocs=args.nproc,
                start_method="spawn",
            )  # fmt: skip
            cost = json.loads(Path(folder, "find-unused-rank0.json").read_text())
    wall = time.perf_counter() - started
    shape = args.shape
    backend = "NCCL" if args.device == "cuda" else f"gloo, {args.threads} torch thread per rank"
    print(
        f"# per-rank memory under DDP and FSDP2: {args.nproc} ranks on {args.device} "
        f"({backend}); Llama {shape.num_blocks} x {shape.hidden}, MLP {shape.intermediate}, vocab "
        f"{shape.vocab}, {results[0][0]['num_parameters']:,} parameters, float32 AdamW; LISA "
        f"gamma {args.gamma}, K {args.interval}; {args.steps} steps of 1 x {args.seq_len} tokens "
        f"per rank; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; wall "
        f"{wall:.0f} s\n"
    )
    print(tables(results))
    print()
    print(summary(results))
    if cost is not None:
        without, with_search = (cost["median_step_seconds"][k] for k in ("false", "true"))
        print(
            f"\nDDP FT, steps interleaved on rank 0: median step {without:.3f} s with "
            f"find_unused_parameters=False, {with_search:.3f} s with True "
            f"(ratio {with_search / without:.3f})"
        )
    if args.json_out is not None:
        record = {
            "argv": sys.argv, "wall_seconds": wall, "shape": vars(shape), "ranks": results,
            "find_unused_cost": cost,
        }  # fmt: skip
        args.json_out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
