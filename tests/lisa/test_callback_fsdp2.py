"""LisaCallback in transformers.Trainer under accelerate's FSDP2 (examples/trainer_fsdp2.py).

The recipe, examples/recipes/accelerate-fsdp2.yaml, is launched as a user launches it:
``accelerate launch --config_file RECIPE --num_processes N examples/trainer_fsdp2.py ...``.
accelerate sets up FSDP only on GPUs, so on a CPU machine the launch goes as far as accelerate
goes (the config parsed into FSDP2 settings, the model built, the callback attached, the
Trainer built) and the example refuses, in one line, the unsharded run accelerate set up
instead. With CUDA the same launch trains: the parameters are DTensors, every rank draws the
blocks a one-process engine draws, and only E, H, the extras and the active blocks hold AdamW
state.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "recipes" / "accelerate-fsdp2.yaml"
SCRIPT = ROOT / "examples" / "trainer_fsdp2.py"
STEPS, GAMMA, INTERVAL = 4, 2, 2
RUN = [
    "--model", "tiny-llama", "--steps", str(STEPS), "--gamma", str(GAMMA),
    "--interval", str(INTERVAL), "--batch-size", "2", "--train-examples", "8", "--seed", "0",
]  # fmt: skip


def _launch(processes: int, out: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(RECIPE),
        "--num_processes", str(processes), "--main_process_port", "0", str(SCRIPT), *RUN,
        "--out", str(out),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_recipe_parses_into_fsdp2_with_one_unit_per_decoder_block():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from lisa.layers import LayerMap
    from lisa_apps.models import load_model

    argv = ["--config_file", str(RECIPE), "--num_processes", "2", str(SCRIPT), "--out", "x"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.use_fsdp and not args.cpu  # accelerate launches it with torchrun
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    model, _ = load_model("tiny-llama")
    block = model.get_submodule(LayerMap.from_model(model).blocks_path)[0]
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == type(block).__name__ == "LlamaDecoderLayer"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="with CUDA accelerate shards: the GPU test below runs"
)
def test_on_the_cpu_accelerate_sets_up_no_fsdp_and_the_example_refuses_before_training(tmp_path):
    out = tmp_path / "out"
    completed = _launch(2, out)
    assert completed.returncode != 0, completed.stdout
    # Everything before accelerate's part: rank 0 reports each stage once, in order.
    assert completed.stdout.splitlines()[:3] == [
        "config: FSDP version 2 from accelerate, 2 processes",
        "model: tiny-llama, 4 blocks",
        f"callback: LisaCallback(gamma={GAMMA}, interval={INTERVAL}) attached",
    ], completed.stdout
    # accelerate's PartialState found no accelerator, so the run is DistributedType.NO (each
    # process alone) and AcceleratorState never made it FSDP: the example says so, once.
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: accelerate set up DistributedType.NO on this machine, not FSDP: it shards only "
        "on GPUs, so LISA would train an unsharded model. Run on GPUs, or on the CPU use lisa "
        "train --distributed fsdp2 (docs/scaling.md)"
    ], completed.stderr[-4000:]
    assert "exitcode  : 2" in completed.stderr  # each rank exited 2, without a traceback of its own
    # Nothing trained, no file written (the Trainer made its empty output_dir, out/trainer).
    assert [p for p in out.rglob("*") if not p.is_dir()] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate runs FSDP on GPUs only")
def test_on_gpus_the_trainer_trains_sharded_with_the_draws_of_one_process(tmp_path):
    from lisa import Lisa, LisaConfig
    from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap
    from lisa_apps.models import load_model

    processes = min(2, torch.cuda.device_count())
    out = tmp_path / "out"
    completed = _launch(processes, out)
    assert completed.returncode == 0, completed.stderr[-4000:]
    # The draws of a one-process engine with the same config.
    model, _ = load_model("tiny-llama")
    engine = Lisa(
        model,
        torch.optim.AdamW(model.parameters()),
        LisaConfig(gamma=GAMMA, interval=INTERVAL, seed=0),
    )
    for step in range(STEPS):
        engine.begin_step(step)
    for rank in range(processes):
        assert f"rank {rank}: draws {engine.history}" in completed.stdout, completed.stdout
    layer_map = LayerMap.from_model(model)
    always = sum(len(list(layer_map.parameters(g))) for g in (EMBED, HEAD, EXTRAS))
    active = always + GAMMA * len(list(layer_map.block_parameters(0)))
    total = len(list(model.parameters()))
    for rank in range(processes):
        assert f"rank {rank}: AdamW state on {active} of {total} parameters" in completed.stdout
    logs = pd.read_csv(out / "log_history.csv").dropna(subset=["loss"])
    assert logs["step"].tolist() == list(range(1, STEPS + 1))
    assert logs["loss"].notna().all()
    expected = [",".join(map(str, engine.history[step // INTERVAL][1])) for step in range(STEPS)]
    assert logs["lisa_active_blocks"].astype(str).tolist() == expected


def test_under_accelerate_fsdp_the_callback_asks_for_no_ddp_setting_unless_on_the_cpu(
    monkeypatch,
):
    from types import SimpleNamespace

    from lisa.callback import _check_parallel_arguments

    # What the callback reads of TrainingArguments on rank 0 of 2 (world_size needs a process
    # group in a real TrainingArguments): DDP's find_unused_parameters off, as the Trainer sets
    # it by default with activation checkpointing.
    args = SimpleNamespace(world_size=2, fsdp="", use_cpu=False, ddp_find_unused_parameters=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(ValueError, match="DDP with LISA needs find_unused_parameters"):
        _check_parallel_arguments(args, model=None)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch with the FSDP recipe
    _check_parallel_arguments(args, model=None)  # FSDP2 wraps no DDP: nothing to ask for
    args.use_cpu = True  # on the CPU accelerate ignores FSDP and runs DDP: the check holds
    with pytest.raises(ValueError, match="DDP with LISA needs find_unused_parameters"):
        _check_parallel_arguments(args, model=None)
