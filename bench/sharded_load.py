"""Peak CPU memory per rank while an FSDP2 run loads its model: full copy vs sharded loading.

Builds a Llama of about --params parameters (TinyLlama's width: hidden 2048, MLP 5632, 32
heads, 4 key/value heads, vocab 32000, untied; the block count sets the size), saves it as
sharded bfloat16 safetensors in a temporary folder, then starts --nproc gloo ranks (fresh ones
for each way) that load it and shard it with FSDP2 (lisa.distributed.shard_model):

- ``full``: today's way without lisa_apps.sharded_load: ``from_pretrained`` in float32 (what
  ``load_model`` does), the cast to the run's precision (``prepare_model``), then
  ``shard_model``. The ranks load one after another, so the machine holds one whole model at a
  time; a rank's peak is the same as when all load at once (it holds its own copy either way).
- ``sharded``: lisa_apps.sharded_load (meta model, shard_model, each rank reads its rows).

Each rank resets its peak resident set (VmHWM, /proc/self/status) after the imports and the
process group are set up, so the figure is what loading added. The bound printed next to it is
``1.25 x (model / W + largest FSDP2 unit)`` in the run's precision: the rank's shards, one unit
of slack (the largest transient is one slice of one tensor, far below a unit), and 25% for
allocator and file-mapping overhead.

    nice .venv/bin/python -m bench.sharded_load --params 1.1e9 --nproc 2 --precision bf16
    .venv/bin/python -m bench.sharded_load --params 2.2e8 --nproc 2     # 2 blocks, ~1 min

Needs ~2 bytes a parameter of disk and, for ``full``, ~6 bytes a parameter of memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import torch

from bench.memory_time import markdown_table

MIB = 2**20
HIDDEN, MLP, HEADS, KV_HEADS, VOCAB = 2048, 5632, 32, 4, 32000
WAYS = ("full", "sharded")


def llama_config(params: float):
    """TinyLlama's shape with the block count that comes closest to ``params`` parameters."""
    from transformers import LlamaConfig

    head = HIDDEN // HEADS
    per_block = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * head + 3 * HIDDEN * MLP + 2 * HIDDEN
    outside = 2 * VOCAB * HIDDEN + HIDDEN  # embedding, head, final norm
    blocks = max(1, round((params - outside) / per_block))
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=blocks,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
        max_position_embeddings=2048,
    )  # fmt: skip


def save_checkpoint(folder: Path, params: float) -> dict:
    """Save a random bf16 Llama as sharded safetensors; returns its size facts."""
    from transformers import AutoModelForCausalLM

    config = llama_config(params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")  # bf16 storage, never a float32 copy
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(folder, max_shard_size="500MB", safe_serialization=True)
    numels = {name: p.numel() for name, p in model.named_parameters()}
    block = sum(n for name, n in numels.items() if name.startswith("model.layers.0."))
    largest_unit = max(block, numels["model.embed_tokens.weight"], numels["lm_head.weight"])
    return {
        "parameters": sum(numels.values()),
        "blocks": config.num_hidden_layers,
        "largest_unit_parameters": largest_unit,
        "files": len(list(folder.glob("*.safetensors"))),
    }


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)


def _rank(rank: int, world: int, port: int, folder: str, way: str, precision: str, out: str):
    from torch.distributed.device_mesh import init_device_mesh

    from diagnostics.runtime import prepare_model
    from lisa.distributed import shard_model
    from lisa_apps.sharded_load import empty_model, load_shards

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        cpu = torch.device("cpu")
        # Import what either way imports, so the peak counts loading, not code.
        import accelerate  # noqa: F401
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.llama import modeling_llama  # noqa: F401

        AutoConfig.from_pretrained(folder)
        torch.distributed.barrier()
        _reset_peak_rss()
        start_rss = _peak_rss_bytes()
        if way == "full":
            for turn in range(world):  # one whole copy on the machine at a time
                if turn == rank:
                    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
                    prepare_model(model, device=cpu, precision=precision)
                    shard_model(model, mesh=mesh)
                torch.distributed.barrier()
        else:
            model = empty_model(folder)
            prepare_model(model, device=None, precision=precision)  # as finetune does
            shard_model(model, mesh=mesh)
            load_shards(model, cpu)
        local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        result = {
            "rank": rank,
            "peak_above_start_bytes": _peak_rss_bytes() - start_rss,
            "local_shard_bytes": local,
            "dtypes": dtypes,
        }
        Path(out, f"{way}-rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(folder: Path, way: str, world: int, precision: str, out: Path) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(
        _rank, args=(world, _free_port(), str(folder), way, precision, str(out)), nprocs=world,
        start_method="spawn",
    )  # fmt: skip
    return [json.loads((out / f"{way}-rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1.1e9, help="model size (parameters)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (W)")
    parser.add_argument("--precision", choices=("bf16", "float32", "bf16-mixed"), default="bf16")
    parser.add_argument("--ways", default=",".join(WAYS), help="full,sharded or one of them")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    ways = [way for way in args.ways.split(",") if way]
    if not ways or set(ways) - set(WAYS):
        parser.error(f"--ways {args.ways!r}: use full, sharded or both, comma-separated")
    if args.nproc < 2 or args.params <= 0:
        parser.error("--nproc needs at least 2 ranks and --params a positive size")
    workdir = Path(tempfile.mkdtemp(prefix="lisa-sharded-load-"))
    try:
        facts = save_checkpoint(workdir / "model", args.params)
        width = 2 if args.precision == "bf16" else 4  # bytes a parameter in the run
        model_bytes = facts["parameters"] * width
        bound = 1.25 * (model_bytes / args.nproc + facts["largest_unit_parameters"] * width)
        rows = []
        for way in ways:
            for rank in measure(workdir / "model", way, args.nproc, args.precision, workdir):
                peak = rank["peak_above_start_bytes"]
                rows.append(
                    {
                        "way": way,
                        "rank": rank["rank"],
                        "peak_MiB": round(peak / MIB),
                        "x_model": round(peak / model_bytes, 2),
                        "bound_MiB": round(bound / MIB),
                        "within_bound": peak <= bound,
                        "shard_MiB": round(rank["local_shard_bytes"] / MIB),
                        "dtype": ",".join(rank["dtypes"]),
                    }
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{facts['parameters'] / 1e9:.2f}B parameters ({facts['blocks']} blocks, saved bf16 in "
        f"{facts['files']} files), W={args.nproc}, --precision {args.precision}: the model is "
        f"{model_bytes / MIB:,.0f} MiB in the run's dtype; peak RSS added while loading, per rank "
        f"({datetime.date.today()})"
    )
    print(markdown_table(list(rows[0]), [[str(v) for v in row.values()] for row in rows]))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
