"""FSDP2 checkpoints (torch.distributed.checkpoint) under torchrun: 2 gloo ranks, tiny Llama.

A run of 4 steps writes checkpoint-2 and checkpoint-4. The same run is killed with SIGKILL
inside step 3 (after checkpoint-2, before checkpoint-4: not a checkpoint boundary) and resumed
with ``--resume auto``; it must take the same draws on both ranks, log the same losses and end
with the same weights as the run that was not killed (the resumed steps also run with
--offload). On one machine and one kernel set the resumed run repeats the same arithmetic on the
same ranks (the same slices, the same reduction order, the state restored bit for bit), so it is
compared exactly: no tolerance is needed, and none is allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lisa_apps.cli import main
from lisa_apps.outputs import MANIFEST
from lisa_apps.training.checkpoints import latest_checkpoint
from tests.lisa_apps.commands.test_distributed_commands import WORLD, kill_torchrun

TRAIN = [
    "train", "--distributed", "fsdp2", "--model", "tiny-llama", "--steps", "4",
    "--batch-size", "4", "--interval", "2", "--train-examples", "16", "--eval-examples", "2",
    "--max-length", "256", "--no-accuracy", "--no-progress", "--seed", "0", "--skip-before",
    "--save-steps", "2",
]  # fmt: skip
KILLED_IN_STEP = 2  # 0-based: the third step, after checkpoint-2 and before checkpoint-4

# `lisa` with every rank appending {"pid", "step", "active"} to $STEPS_DIR/rank-R.jsonl as each
# step begins (after LISA's engine has taken the step): the file the test polls, and each rank's
# own record of its draws. With $HOLD_AT_STEP set, each rank stays inside that step after
# recording it, so the SIGKILL lands mid-step whatever the machine's load.
RECORDED_LISA = textwrap.dedent(
    """
    import json, os, sys, time
    from lisa.engine import Lisa
    begin = Lisa.begin_step
    record = os.path.join(os.environ["STEPS_DIR"], "rank-" + os.environ["RANK"] + ".jsonl")
    hold = int(os.environ.get("HOLD_AT_STEP", "-1"))
    def begin_step(self, step=None):
        active = begin(self, step)
        with open(record, "a") as file:
            file.write(json.dumps({"pid": os.getpid(), "step": step, "active": list(active)}) + "\\n")
        while step == hold:
            time.sleep(1)
        return active
    Lisa.begin_step = begin_step
    from lisa_apps.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _recorded(steps_dir: Path) -> list[list[dict]]:
    """Each rank's records, rank 0 first."""
    ranks = []
    for rank in range(WORLD):
        path = steps_dir / f"rank-{rank}.jsonl"
        ranks.append(
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
    return ranks


def _recorded_run(script: Path, steps_dir: Path, *argv: str, hold: int | None = None):
    """``torchrun ... RECORDED_LISA argv`` in its own session, started, not waited for."""
    steps_dir.mkdir()
    env = os.environ | {"STEPS_DIR": str(steps_dir), "TQDM_DISABLE": "1"}
    if hold is not None:
        env["HOLD_AT_STEP"] = str(hold)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={WORLD}", str(script), *argv,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def _finished(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-4000:]


def _kill_when_every_rank_is_in(process: subprocess.Popen, steps_dir: Path, step: int) -> None:
    """SIGKILL the whole run once every rank has recorded ``step``: torchrun's process group,
    and each rank's, since torchrun starts every rank in a session of its own."""
    deadline = time.monotonic() + 240
    while not all(r and r[-1]["step"] == step for r in _recorded(steps_dir)):
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the run never reached the step to kill it in"
        time.sleep(0.05)
    kill_torchrun(process, [ranks[-1]["pid"] for ranks in _recorded(steps_dir)])


def _dcp_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model state a DCP checkpoint holds, read in this one process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint / "full.pt"
    dcp_to_torch_save(checkpoint / "dcp", target)
    state = torch.load(target, weights_only=False)["model"]
    target.unlink()
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, and the killed one (its folder as the kill left it) resumed."""
    root = tmp_path_factory.mktemp("fsdp2-ckpt")
    script = root / "recorded_lisa.py"
    script.write_text(RECORDED_LISA)
    whole, killed = root / "whole", root / "killed"
    uninterrupted = _recorded_run(script, root / "steps-whole", *TRAIN, "--out", str(whole))
    _finished(uninterrupted)

    process = _recorded_run(
        script, root / "steps-killed", *TRAIN, "--out", str(killed), hold=KILLED_IN_STEP
    )
    _kill_when_every_rank_is_in(process, root / "steps-killed", KILLED_IN_STEP)
    left = {
        "latest": latest_checkpoint(killed),
        "folders": sorted(p.name for p in killed.glob("checkpoint-*")),
        "status": json.loads((killed / MANIFEST).read_text())["status"],
        "files": {p.name for p in killed.iterdir()},
    }
    checkpoint = killed / "checkpoint-2"
    left["checkpoint_files"] = {p.name for p in checkpoint.iterdir()}
    left["shards"] = len(list((checkpoint / "dcp").glob("*.distcp")))
    left["state"] = json.loads((checkpoint / "trainer_state.json").read_text())

    # A limit of one: checkpoint-2 goes only once checkpoint-4 is complete. The resumed steps
    # run with --offload (FSDP2's CPUOffloadPolicy): on the CPU it moves nothing but runs its
    # own copies, so they must still equal the steps without it, exactly.
    resumed = _recorded_run(
        script, root / "steps-resumed", *TRAIN, "--save-total-limit", "1", "--offload",
        "--resume", "auto", "--out", str(killed),
    )  # fmt: skip
    _finished(resumed)
    return {
        "whole": whole,
        "killed": killed,
        "left": left,
        "draws": {
            name: _recorded(root / f"steps-{name}") for name in ("whole", "killed", "resumed")
        },
    }


@pytest.fixture(scope="module")
def uninterrupted(runs):
    return runs["whole"]


def test_sigkill_inside_step_3_leaves_checkpoint_2_complete_and_the_run_unfinished(runs):
    left = runs["left"]
    assert left["latest"].name == "checkpoint-2"  # checkpoint-4 was never begun or is incomplete
    assert "metrics.json" not in left["files"] and left["status"] == "running"
    assert {
        "dcp",
        "scheduler.pt",
        "trainer_state.json",
        "rng_state_0.pth",
        "rng_state_1.pth",
    } <= left["checkpoint_files"]
    assert left["shards"] == WORLD  # one shard file per rank
    state = left["state"]
    assert state["world_size"] == WORLD and "LisaCallback" in state["stateful_callbacks"]
    # Each rank was killed inside step 3 (0-based 2), having recorded steps 0, 1 and 2 only.
    for records in runs["draws"]["killed"]:
        assert [r["step"] for r in records] == [0, 1, KILLED_IN_STEP]


def test_fsdp2_run_killed_and_resumed_equals_the_uninterrupted_run(runs):
    whole, out = runs["whole"], runs["killed"]
    assert not (out / "checkpoint-2").exists() and latest_checkpoint(out) == out / "checkpoint-4"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 2 and metrics["resumed_from"].endswith("checkpoint-2")
    assert json.loads((out / MANIFEST).read_text())["status"] == "finished"
    resumed, reference = (pd.read_csv(o / "log_history.csv") for o in (out, whole))
    assert resumed["step"].tolist() == reference["step"].tolist() == [1, 2, 3, 4]
    assert resumed["lisa_active_blocks"].tolist() == reference["lisa_active_blocks"].tolist()
    assert resumed["loss"].tolist() == reference["loss"].tolist()
    assert resumed["learning_rate"].tolist() == reference["learning_rate"].tolist()
    final, expected = (_dcp_model_state(o / "checkpoint-4") for o in (out, whole))
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=0, rtol=0, msg=name)


def test_every_rank_draws_what_the_uninterrupted_run_drew_at_every_step(runs):
    draws = runs["draws"]

    def by_step(records):
        return {r["step"]: r["active"] for r in records}

    reference = by_step(draws["whole"][0])
    assert sorted(reference) == [0, 1, 2, 3]
    for rank in range(WORLD):
        assert by_step(draws["whole"][rank]) == reference  # the ranks agree with each other
        # On resume the loader re-applies the checkpoint's active set (step 1's period, no
        # draw), then steps 2 and 3 run.
        assert by_step(draws["resumed"][rank]) == {s: reference[s] for s in (1, 2, 3)}
        killed = by_step(draws["killed"][rank])
        assert killed == {step: reference[step] for step in killed}


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


def test_estimate_checkpoint_figures_equal_what_each_rank_wrote(uninterrupted):
    from safetensors import safe_open
    from torch.distributed.checkpoint import FileSystemReader

    from lisa_apps.estimate import Setup, estimate
    from lisa_apps.tiny import tiny_config

    setup = Setup("lisa", "float32", gamma=2, fsdp_ranks=WORLD)
    (row,) = estimate(tiny_config("tiny-llama"), [setup], model_name="tiny-llama")
    # checkpoint-4/dcp, rank by rank: the tensor bytes of each rank's shard file. AdamW's
    # 4-byte steps are the same on every rank and DCP writes them once, into one rank's file;
    # the estimate counts them on every rank (each rank holds its own).
    metadata = FileSystemReader(uninterrupted / "checkpoint-4" / "dcp").read_metadata()
    shard_bytes, steps = dict.fromkeys((f"__{r}_0.distcp" for r in range(WORLD)), 0), 0
    for index, stored in metadata.storage_data.items():
        if index.fqn.endswith(".step"):
            steps += 1
            continue
        tensor = metadata.state_dict_metadata[index.fqn]
        if hasattr(tensor, "chunks"):  # not a pickled value (the param groups' settings)
            (chunk,) = [c for c in tensor.chunks if list(c.offsets) == list(index.offset)]
            itemsize = torch.empty((), dtype=tensor.properties.dtype).element_size()
            shard_bytes[stored.relative_path] += chunk.sizes.numel() * itemsize
    assert steps > 0
    assert all(b + 4 * steps == row["checkpoint_bytes"] for b in shard_bytes.values()), shard_bytes
    # model/: the whole model in the weights' dtype, gathered one unit at a time.
    exported = 0
    for path in (uninterrupted / "model").glob("*.safetensors"):
        with safe_open(path, "pt") as file:
            exported += sum(file.get_tensor(k).nbytes for k in file.keys())  # noqa: SIM118
    assert exported == row["export_bytes"]
    assert row["export_gathered_bytes"] == row["largest_unit_bytes"]


def test_estimate_prints_a_checkpointing_line_per_row_under_fsdp_only(capsys):
    from lisa_apps.estimate.report import _MIB, format_bytes

    argv = ["estimate", "tiny-llama", "--methods", "ft,lora,lisa", "--precision", "float32"]
    assert main([*argv, "--fsdp", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main([*argv, "--fsdp", "2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpointing")]
    assert len(lines) == len(rows) == 3
    for line, row in zip(lines, rows, strict=True):
        assert f"{format_bytes(row['checkpoint_bytes'], _MIB)} (x 2 ranks)" in line
        assert f"({format_bytes(row['export_gathered_bytes'], _MIB)}" in line
        assert line.endswith(f"writes {format_bytes(row['export_bytes'], _MIB)}")
    assert main(argv) == 0  # one process: nothing is sharded or gathered
    assert "checkpointing" not in capsys.readouterr().out
