"""`lisa train` and `lisa diagnose` under torchrun (2 gloo ranks on the CPU, tiny Llama).

Each run is a real ``torchrun --standalone --nproc_per_node 2 lisa ...``: it must finish, write
one set of results (rank 0 alone writes), report every rank's memory, and compute what one
process computes on the same global batches: the same draws, the first step's loss within the
rounding of its sums, the saved weights within AdamW's bound (constants below). The strict
parity check of the same arithmetic (AdamW at eps 1, broken runs rejected) is
tests/lisa/test_distributed.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from diagnostics.recorder import load_norms
from diagnostics.runtime import prepare_model
from lisa.config import LisaConfig
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa_apps.cli import main
from lisa_apps.commands.arguments import load_data
from lisa_apps.data import DataCollator, tokenize_examples
from lisa_apps.models import load_model
from lisa_apps.outputs import MANIFEST
from lisa_apps.training import FinetuneConfig
from lisa_apps.training.loop import train_loop
from tests.numerics import U32, adam_ratio_bound

WORLD = 2
LISA = str(Path(sys.executable).parent / "lisa")  # the entry point of this environment
TRAIN = [
    "--model", "tiny-llama", "--steps", "4", "--batch-size", "4", "--interval", "2",
    "--train-examples", "16", "--eval-examples", "2", "--max-length", "256", "--no-accuracy",
    "--no-progress", "--seed", "0",
]  # fmt: skip
STEPS = 4
# Saved weights: an AdamW step moves an element by at most lr * adam_ratio_bound(STEPS) (1.007)
# whatever the gradient (eps, clipping and weight decay only shrink a step or a difference), so
# two runs of STEPS steps from the same weights differ by at most twice that per step. At
# `lisa train`'s eps 1e-8 that is also what one rounding difference can cost (a near-zero
# gradient whose sign flips moves an element by up to 2 lr), so nothing tighter holds on every
# CPU kernel set.
PARAM_ATOL = STEPS * 2 * DEFAULT_LEARNING_RATES["lisa"] * adam_ratio_bound(STEPS)  # 3.2e-3
# The first step's loss: equal weights, its sums in another order, which differ by at most
# 2(n - 1)u * sum|x| (Higham 2002, eq. 4.4); the chains of sums behind it hold under n = 4096
# terms (4 x 256 tokens, the vocabulary of 320, per block widths <= 128 and positions <= 256),
# and the logits' terms are allowed twice the loss (log-sum-exp less a logit). Later losses
# follow weights that may differ by PARAM_ATOL and are not compared.
FIRST_LOSS_RTOL = 2 * 4096 * U32 * 2  # 9.8e-4
# The `diagnosed` fixture's run (tests/lisa_apps/commands/conftest.py), on two ranks.
DIAGNOSE = [
    "--model", "tiny-llama", "--steps", "3", "--num-examples", "24", "--max-length", "256",
    "--kinds", "weight,delta", "--no-progress", "--gamma", "2",
]  # fmt: skip


def torchrun_command(*argv: str, script: str = LISA) -> list[str]:
    """``torchrun --standalone --nproc_per_node WORLD script argv...``, as a command line."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={WORLD}", script, *argv,
    ]  # fmt: skip


def torchrun(
    *argv: str, script: str = LISA, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        torchrun_command(*argv, script=script), capture_output=True, text=True, timeout=300,
        env=None if env is None else os.environ | env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def kill_torchrun(process: subprocess.Popen, rank_pids: list[int]) -> None:
    """SIGKILL a torchrun run started with ``start_new_session=True``: torchrun's process group
    and each rank's, since torchrun starts every rank in a session of its own; return once every
    rank is gone."""
    os.killpg(process.pid, signal.SIGKILL)
    for pid in rank_pids:
        os.killpg(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in rank_pids):
        assert time.monotonic() < deadline, "a rank outlived its SIGKILL"
        time.sleep(0.05)


def _one_set_of_results(out: Path) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "finished"
    # Nothing but what rank 0 listed: no second manifest, no stray files of another rank.
    assert {p.name for p in out.iterdir()} == set(manifest["files"]) | {MANIFEST}
    return manifest


@pytest.fixture(scope="module")
def fsdp2_train(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2") / "run"
    completed = torchrun("train", "--distributed", "fsdp2", *TRAIN, "--out", str(out))
    return out, completed.stdout


def test_train_fsdp2_under_torchrun_writes_one_set_of_results(fsdp2_train):
    out, stdout = fsdp2_train
    manifest = _one_set_of_results(out)
    assert {"metrics.json", "log_history.csv", "active_sets.json", "model"} <= set(
        manifest["files"]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["settings"]["distributed"] == "fsdp2"
    assert len(metrics["peak_memory_bytes_per_rank"]) == WORLD
    # Every rank reports its own memory, rank 0 the summary.
    assert all(f"rank {r}: peak memory" in stdout for r in range(WORLD))
    assert stdout.count("held-out loss") == 1


def test_train_fsdp2_equals_one_process_of_the_same_loop(fsdp2_train):
    out, _ = fsdp2_train
    model, tokenizer = load_model("tiny-llama", seed=0)
    examples = load_data("math", split="train", num_examples=16, seed=0)
    features = tokenize_examples(examples, tokenizer, max_length=256)
    config = FinetuneConfig(
        method="lisa", steps=4, batch_size=4, max_length=256, seed=0,
        lisa=LisaConfig(gamma=2, interval=2, seed=0), distributed="fsdp2",
    )  # fmt: skip
    prepare_model(model, device=torch.device("cpu"))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    run = train_loop(
        model, features, DataCollator(tokenizer), config, device=torch.device("cpu"),
        precision="float32",
    )  # fmt: skip
    logged = pd.read_csv(out / "log_history.csv")
    assert len(logged["loss"]) == len(run.log_history["loss"]) == STEPS
    assert logged["loss"][0] == pytest.approx(run.log_history["loss"][0], rel=FIRST_LOSS_RTOL)
    assert logged["lisa_active_blocks"].tolist() == run.log_history["lisa_active_blocks"].tolist()
    # The saved model holds the full (gathered) weights of the sharded run.
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(
            saved.get_parameter(name), parameter.detach(), atol=PARAM_ATOL, rtol=0, msg=name
        )


# `lisa train --distributed ddp`: its one set of results is checked on the uninterrupted run of
# tests/lisa_apps/test_checkpoint_ddp.py (one 2-rank launch serves both).


def test_diagnose_fsdp2_under_torchrun_equals_one_process(tmp_path, diagnosed):
    out = tmp_path / "diagnosis"
    completed = torchrun("diagnose", "--distributed", "fsdp2", *DIAGNOSE, "--out", str(out))
    manifest = _one_set_of_results(out)
    assert set(manifest["files"]) == set(json.loads((diagnosed / MANIFEST).read_text())["files"])
    sidecar = json.loads((out / "norms.json").read_text())
    assert sidecar["probes"]["ft"]["settings"]["distributed"] == "fsdp2"
    assert sidecar["probes"]["lora"]["settings"]["distributed"] == "ddp"
    assert all(len(sidecar["probes"][m]["peak_memory_bytes_per_rank"]) == WORLD for m in ("lora", "ft"))
    assert all(f"rank {r}: peak memory" in completed.stdout for r in range(WORLD))
    keys = ["method", "step", "group", "kind", "reduce"]
    both = load_norms(out).merge(load_norms(diagnosed), on=keys, suffixes=("_two", "_one"))
    assert len(both) == len(load_norms(diagnosed))
    torch.testing.assert_close(
        torch.tensor(both["norm_two"].to_numpy()), torch.tensor(both["norm_one"].to_numpy()),
        rtol=1e-4, atol=1e-7,
    )  # fmt: skip


# refused before any work, in this process ---------------------------------------------------

LAUNCH = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29500"}  # fmt: skip


def assert_refused_in_environment(argv, environment, message, tmp_path, monkeypatch, capsys):
    """`lisa ARGV` under the launch variables ``environment`` exits 2 with one line holding
    ``message``, before creating --out."""
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    code = main([*argv, "--model", "tiny-llama", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0], error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "environment", "message"),
    [
        (["train", "--distributed", "fsdp2"], {}, "needs one process per device started by torchrun"),
        (["diagnose", "--distributed", "ddp"], {}, "torchrun --nproc_per_node N"),
        (["train"], LAUNCH, "pass --distributed fsdp2 or ddp"),
        (["train", "--distributed", "fsdp2", "--batch-size", "3"], LAUNCH, "use a multiple of 2"),
        (["diagnose", "--distributed", "fsdp2", "--device", "cuda:1"], LAUNCH, "LOCAL_RANK"),
    ],
    ids=["train-outside-torchrun", "diagnose-outside-torchrun", "torchrun-without-distributed",
         "batch-not-split-evenly", "device-index"],
)  # fmt: skip
def test_distributed_mistakes_are_refused_with_one_line(
    argv, environment, message, tmp_path, monkeypatch, capsys
):
    assert_refused_in_environment(argv, environment, message, tmp_path, monkeypatch, capsys)
