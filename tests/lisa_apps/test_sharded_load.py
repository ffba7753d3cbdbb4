"""Sharded loading (lisa_apps.sharded_load): 2 gloo ranks fill FSDP2 shards from safetensors.

The ranks load tiny Llamas saved as sharded safetensors (untied in float32, tied in bfloat16)
into float32 and bfloat16 runs; rank 0 saves what it gathered, and the test compares it with a
one-process load. Loading copies stored values (a cast at most), so they must agree exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lisa_apps.sharded_load import can_load_sharded, checkpoint_files, empty_model
from lisa_apps.tiny import build_tiny_model, build_tiny_tokenizer

WORLD = 2
INDEX = "model.safetensors.index.json"
# 321 rows: not a multiple of the 2 ranks, so the last rank's shard is one row short.
VOCAB = 321
CASES = {"untied": (False, torch.float32), "tied": (True, torch.bfloat16)}
RUN_DTYPES = (torch.float32, torch.bfloat16)


def _save(folder: Path, tie: bool, dtype: torch.dtype) -> None:
    model = build_tiny_model(
        "tiny-llama", num_blocks=2, hidden=64, vocab_size=VOCAB, tie=tie, seed=7, dtype=dtype
    )
    # ~40 kB per file: several files, with the embedding alone in one (a sharded set).
    model.save_pretrained(folder, max_shard_size="40kB", safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(folder)


def _gathered(model) -> dict:
    from lisa.distributed import reshard_model

    reshard_model(model)  # a forward leaves the root unit gathered
    tensors = {f"param:{n}": p.full_tensor() for n, p in model.named_parameters()}
    return tensors | {f"buffer:{n}": b.clone() for n, b in model.named_buffers()}


def _worker(rank: int, port: int, root: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from lisa.distributed import shard_model
    from lisa_apps.sharded_load import load_for_run, load_shards, on_meta

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for case in CASES:
            for dtype in RUN_DTYPES:
                model = empty_model(Path(root) / case)
                model.to(dtype=dtype)  # what prepare_model does to a loaded model
                shard_model(model, mesh=init_device_mesh("cpu", (WORLD,)))
                load_shards(model, "cpu")
                before = _gathered(model)
                with torch.no_grad():  # FSDP2's lazy init re-pads the shards: values must stay
                    model(input_ids=torch.tensor([[1, 2, 3]]))
                results[case, str(dtype)] = {
                    "before_forward": before,
                    "after_forward": _gathered(model),
                    "tied": model.lm_head.weight is model.model.embed_tokens.weight,
                    "local_rows": {n: p.to_local().shape[0] for n, p in model.named_parameters()},
                }
        results["finetune"] = _finetune_both_ways(Path(root) / "untied")
        results["ft_probe"] = _ft_probe_both_ways(Path(root) / "untied")
        model, _ = load_for_run(str(Path(root) / "renamed"), distributed="fsdp2")
        results["fallback_on_meta"] = on_meta(model)
        torch.save(results, Path(root) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _finetune_both_ways(folder: Path) -> dict:
    """Two LISA steps under FSDP2 from a sharded load (lisa train's path) and a full load."""
    from lisa.config import LisaConfig
    from lisa_apps.data import make_math_problems
    from lisa_apps.models import load_model
    from lisa_apps.sharded_load import load_for_run, on_meta
    from lisa_apps.training import FinetuneConfig, finetune

    config = FinetuneConfig(
        method="lisa", steps=2, batch_size=2, max_length=384, seed=0, score_accuracy=False,
        device="cpu", precision="float32", lisa=LisaConfig(gamma=1, interval=1, seed=0),
        distributed="fsdp2",
    )  # fmt: skip
    runs = {}
    for way in ("sharded", "full"):
        if way == "sharded":
            model, tokenizer = load_for_run(str(folder), distributed="fsdp2")
        else:
            model, tokenizer = load_model(str(folder))
        empty = on_meta(model)
        result = finetune(
            model, tokenizer, make_math_problems(4), make_math_problems(2, split="test"), config,
            progress=False, evaluate_before=False,
        )  # fmt: skip
        losses = result.log_history["loss"].dropna().tolist()
        runs[way] = {
            "on_meta": empty,
            "losses": losses,
            "eval_loss": result.metrics["after"]["eval_loss"],
        }
    return runs


def _ft_probe_both_ways(folder: Path) -> dict:
    """lisa diagnose's FT probe under FSDP2 from an empty model (filled after sharding) and a
    full load."""
    from diagnostics.probes import run_probe
    from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
    from lisa_apps.models import load_model
    from lisa_apps.sharded_load import load_shards

    full, tokenizer = load_model(str(folder))
    features = tokenize_examples(make_math_problems(4), tokenizer, max_length=384)
    probes = {}
    for way, model in (("sharded", empty_model(folder)), ("full", full)):
        table = run_probe(
            model, features, "ft", collate=DataCollator(tokenizer), steps=2, batch_size=2,
            device="cpu", progress=False, distributed="fsdp2", fill_shards=load_shards,
        )  # fmt: skip
        probes[way] = {"losses": list(table.attrs["losses"]), "norms": table["norm"].tolist()}
    return probes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded-load")
    for case, (tie, dtype) in CASES.items():
        _save(root / case, tie, dtype)
    shutil.copytree(root / "untied", root / "renamed")
    index = json.loads((root / "renamed" / INDEX).read_text())
    del index["weight_map"]["lm_head.weight"]
    (root / "renamed" / INDEX).write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def ranks(checkpoints):
    mp.start_processes(
        _worker, args=(_free_port(), str(checkpoints)), nprocs=WORLD, start_method="spawn"
    )
    return [torch.load(checkpoints / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _one_process(folder: Path, dtype: torch.dtype) -> dict:
    """The full-copy path: load_model's from_pretrained in float32, then prepare_model's cast."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(dtype=dtype)
    tensors = {f"param:{n}": p.detach() for n, p in model.named_parameters()}
    return tensors | {f"buffer:{n}": b for n, b in model.named_buffers()}


def test_checkpoints_are_sharded_sets(checkpoints):
    for case in CASES:
        assert (checkpoints / case / "model.safetensors.index.json").is_file()
        assert len(set(checkpoint_files(checkpoints / case).values())) > 2
        assert can_load_sharded(checkpoints / case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", RUN_DTYPES, ids=str)
def test_sharded_load_equals_one_process_load(ranks, checkpoints, case, dtype):
    expected = _one_process(checkpoints / case, dtype)
    for rank in ranks:
        result = rank[case, str(dtype)]
        for moment in ("before_forward", "after_forward"):
            loaded = result[moment]
            assert loaded.keys() == expected.keys()
            for name, value in expected.items():
                assert loaded[name].dtype == value.dtype, name
                assert torch.equal(loaded[name], value), f"{name} ({moment})"


@pytest.mark.parametrize("dtype", RUN_DTYPES, ids=str)
def test_tied_weights_stay_tied(ranks, dtype):
    for rank in ranks:
        assert rank["tied", str(dtype)]["tied"]
        assert not rank["untied", str(dtype)]["tied"]
        names = rank["tied", str(dtype)]["after_forward"]
        assert "param:lm_head.weight" not in names  # one parameter, named once


def test_finetune_from_a_sharded_load_trains_as_from_a_full_load(ranks):
    # The same weights, batches and ops in the same order: the same floats, bit for bit.
    for rank in ranks:
        runs = rank["finetune"]
        assert runs["sharded"]["on_meta"] and not runs["full"]["on_meta"]
        assert len(runs["sharded"]["losses"]) == 2
        assert runs["sharded"]["losses"] == runs["full"]["losses"]
        assert runs["sharded"]["eval_loss"] == runs["full"]["eval_loss"]


def test_ft_probe_from_an_empty_model_equals_one_from_a_full_load(ranks):
    # As above: the same weights and the same ops give the same floats.
    for rank in ranks:
        probes = rank["ft_probe"]
        assert len(probes["sharded"]["losses"]) == 2 and probes["sharded"]["norms"]
        assert probes["sharded"] == probes["full"]


def test_each_rank_holds_its_rows_only(ranks):
    # torch.chunk's split: ceil(321 / 2) = 161 rows on rank 0, the other 160 on rank 1.
    rows = [rank["untied", str(torch.float32)]["local_rows"] for rank in ranks]
    assert rows[0]["model.embed_tokens.weight"] == 161
    assert rows[1]["model.embed_tokens.weight"] == VOCAB - 161


def test_empty_model_has_no_parameter_storage_and_computed_buffers(checkpoints):
    model = empty_model(checkpoints / "untied")
    assert all(p.is_meta for p in model.parameters())
    reference = _one_process(checkpoints / "untied", torch.float32)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, reference[f"buffer:{name}"]), name


def test_empty_model_refuses_a_checkpoint_without_the_model_names(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoints / "untied" / "config.json").read_text())
    tensors = {}
    for file in set(checkpoint_files(checkpoints / "untied").values()):
        tensors |= {f"old.{n}": t for n, t in load_file(file).items()}
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"lack \d+ of the model.s tensors"):
        empty_model(folder)


def test_a_checkpoint_with_other_names_loads_whole_instead(ranks):
    # The index without lm_head.weight: empty_model refuses it, load_for_run loads it whole.
    assert all(rank["fallback_on_meta"] is False for rank in ranks)
