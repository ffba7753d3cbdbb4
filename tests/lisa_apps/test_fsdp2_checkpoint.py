"""FSDP2 checkpoints (torch.distributed.checkpoint) under torchrun: 2 gloo ranks, tiny Llama.

A run of 4 steps writes checkpoint-2 and checkpoint-4; the same run stopped during step 3 and
resumed with ``--resume auto`` must take the same draws, log the same losses and end with the
same weights as the run that was not stopped (the resumed steps also run with --offload). On one machine
and one kernel set the resumed run repeats the same arithmetic on the same ranks (the same
slices, the same reduction order, the state restored bit for bit), so it is compared exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from lisa_apps.cli import main
from lisa_apps.training.checkpoints import latest_checkpoint
from tests.lisa_apps.commands.test_distributed_commands import WORLD, torchrun

TRAIN = [
    "train", "--distributed", "fsdp2", "--model", "tiny-llama", "--steps", "4",
    "--batch-size", "4", "--interval", "2", "--train-examples", "16", "--eval-examples", "2",
    "--max-length", "256", "--no-accuracy", "--no-progress", "--seed", "0", "--skip-before",
    "--save-steps", "2",
]  # fmt: skip


def _dcp_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model state a DCP checkpoint holds, read in this one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint / "full.pt"
    dcp_to_torch_save(checkpoint / "dcp", target)
    state = torch.load(target, weights_only=False)["model"]
    target.unlink()
    return state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2-ckpt") / "run"
    torchrun(*TRAIN, "--out", str(out))
    return out


def test_fsdp2_run_stopped_after_checkpoint_2_and_resumed_equals_the_uninterrupted_run(
    uninterrupted, tmp_path
):
    # The run folder as a run stopped during step 3 leaves it: checkpoint-2 complete, a
    # checkpoint-4 begun (no trainer_state.json, so incomplete), no results yet.
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out, ignore=shutil.ignore_patterns("model", "metrics.json"))
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    assert latest_checkpoint(out) == out / "checkpoint-2"
    checkpoint = out / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"dcp", "scheduler.pt", "trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= files
    assert len(list((checkpoint / "dcp").glob("*.distcp"))) == WORLD  # one shard file per rank
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == WORLD and "LisaCallback" in state["stateful_callbacks"]
    # A limit of one: checkpoint-2 goes only once checkpoint-4 is complete. The resumed steps
    # run with --offload (FSDP2's CPUOffloadPolicy): on the CPU it moves nothing but runs its
    # own copies, so they must still equal the steps without it, exactly.
    torchrun(
        *TRAIN, "--save-total-limit", "1", "--offload", "--resume", "auto", "--out", str(out)
    )

    assert not (out / "checkpoint-2").exists() and latest_checkpoint(out) == out / "checkpoint-4"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 2
    resumed, whole = (pd.read_csv(o / "log_history.csv") for o in (out, uninterrupted))
    assert resumed["step"].tolist() == whole["step"].tolist() == [1, 2, 3, 4]
    assert resumed["lisa_active_blocks"].tolist() == whole["lisa_active_blocks"].tolist()
    assert resumed["loss"].tolist() == whole["loss"].tolist()
    assert resumed["learning_rate"].tolist() == whole["learning_rate"].tolist()
    final, reference = (_dcp_model_state(o / "checkpoint-4") for o in (out, uninterrupted))
    assert final.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], atol=0, rtol=0, msg=name)


def test_fsdp2_export_loads_and_equals_the_gathered_parameters(uninterrupted):
    from transformers import AutoModelForCausalLM

    # Gathered and written one unit at a time: a shard per block (4), then the rest.
    index = json.loads((uninterrupted / "model" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4 + 1
    saved = AutoModelForCausalLM.from_pretrained(uninterrupted / "model")
    gathered = _dcp_model_state(uninterrupted / "checkpoint-4")
    named = dict(saved.named_parameters())
    assert set(named) <= set(gathered)
    for name, parameter in named.items():
        torch.testing.assert_close(parameter.detach(), gathered[name], atol=0, rtol=0, msg=name)


def test_fsdp2_checkpoint_on_another_world_size_is_refused_with_one_line(
    uninterrupted, monkeypatch, capsys
):
    for name, value in {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    code = main([*TRAIN, "--batch-size", "8", "--resume", str(uninterrupted / "checkpoint-4"),
                 "--out", str(uninterrupted)])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "written by 2 ranks" in error[0], error


def test_offload_without_fsdp2_is_refused_with_one_line(tmp_path, capsys):
    code = main(["train", "--model", "tiny-llama", "--offload", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--offload applies to --distributed fsdp2" in error[0]
    assert not (tmp_path / "out").exists()


def test_estimate_offload_keeps_activations_and_one_gathered_unit_on_the_device(capsys):
    from lisa_apps.estimate.report import _MIB, format_bytes
    from lisa_apps.models import load_model

    argv = ["estimate", "tiny-llama", "--fsdp", "2", "--methods", "ft", "--precision", "float32"]
    assert main([*argv, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    model, _ = load_model("tiny-llama")  # float32; its largest unit is one block (untied E/H)
    block = sum(p.numel() * 4 for p in model.model.layers[0].parameters())
    assert row["largest_unit_bytes"] == max(block, model.model.embed_tokens.weight.numel() * 4)
    assert main([*argv, "--offload"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("--offload"))
    device = row["activation_bytes_estimate"] + row["largest_unit_bytes"]
    assert line.endswith(f"= {format_bytes(device, _MIB)}")
