"""LISA in two processes (gloo on the CPU, tiny Llama): FSDP2 and DDP equal one process.

Each fixture starts two ranks once (torch.multiprocessing, spawn) and the tests read what each
rank saved. "Equal" means: the same draws on both ranks and as in one process, per-step global
losses within 1e-5 relative and final parameters within 1e-5 absolute of a one-process run on
the same global batches (float32 sums in another order), and exactly equal parameters on the
two DDP ranks.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from lisa import LayerMap, Lisa, LisaConfig, minimum_optimizer_state_bytes
from lisa.distributed import check_model_wrapper, shard_units
from tests.lisa import distributed_workers as workers

WORLD = 2
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_ranks(body, tmp_path, name: str) -> list[dict]:
    mp.start_processes(
        body, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn"
    )
    return [torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference():
    return workers.reference_run()


@pytest.fixture(scope="module")
def fsdp2_ranks(tmp_path_factory):
    return _run_ranks(workers.fsdp2_worker, tmp_path_factory.mktemp("fsdp2"), "fsdp2")


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    return _run_ranks(workers.ddp_worker, tmp_path_factory.mktemp("ddp"), "ddp")


def _assert_close_params(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=PARAM_ATOL, rtol=0, msg=name)


# FSDP2 -------------------------------------------------------------------------------------------


def test_fsdp2_units_follow_the_layer_groups(tiny_llama, tiny_gpt2):
    untied = shard_units(tiny_llama(num_blocks=3))
    assert [group for group, _ in untied] == ["block.0", "block.1", "block.2", "embed", "head"]
    tied = tiny_gpt2(num_blocks=2)
    units = dict(shard_units(tied))
    # The tied head shares E's weight, so it joins E's unit; wte and wpe are both E.
    assert "head" not in units
    assert {id(m) for m in units["embed"]} == {
        id(tied.transformer.wte), id(tied.transformer.wpe), id(tied.lm_head)
    }


def test_fsdp2_ranks_draw_alike_and_equal_one_process(fsdp2_ranks, reference):
    for rank in fsdp2_ranks:
        assert rank["history"] == reference["history"]
        assert len(rank["history"]) == 3  # three periods: the run switched
        torch.testing.assert_close(
            torch.tensor(rank["losses"]), torch.tensor(reference["losses"]), rtol=LOSS_RTOL, atol=0
        )
        _assert_close_params(rank["params"], reference["params"])


def test_lisa_callback_on_the_sharded_model_equals_one_process(fsdp2_ranks, reference):
    for rank in fsdp2_ranks:
        assert rank["callback_history"] == reference["history"]
        torch.testing.assert_close(
            torch.tensor(rank["callback_losses"]), torch.tensor(reference["losses"]),
            rtol=LOSS_RTOL, atol=0,
        )  # fmt: skip


def test_fsdp2_optimizer_state_is_the_minimum_of_the_local_shards(fsdp2_ranks):
    for rank in fsdp2_ranks:
        held, minimum = zip(*rank["state_after_step"], strict=True)
        assert held == minimum  # after every step, through two switches
        assert rank["report_state_bytes"] == held[-1]


def test_fsdp2_shards_split_the_optimizer_state_between_ranks(fsdp2_ranks):
    """Moments are split exactly; every rank keeps its own 4-byte step per parameter."""
    layer_map = LayerMap.from_model(workers.tiny_model())
    last_draw = fsdp2_ranks[0]["history"][-1][1]
    groups = ["embed", "head", "extras", *(f"block.{i}" for i in last_draw)]
    active = [p for group in groups for _, p in layer_map.parameters(group)]
    held = sum(rank["state_after_step"][-1][0] for rank in fsdp2_ranks)
    assert held == minimum_optimizer_state_bytes(active) + (WORLD - 1) * 4 * len(active)


def test_fsdp2_memory_report_says_it_counts_local_shards(fsdp2_ranks):
    for index, rank in enumerate(fsdp2_ranks):
        assert rank["scope"].startswith(f"local shards of rank {index} of {WORLD}")


def test_fsdp2_resume_reproduces_draws_losses_and_parameters(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert rank["resumed_history"] == rank["history"]
        torch.testing.assert_close(
            torch.tensor(rank["resumed_losses"]),
            torch.tensor(rank["losses"][workers.RESUME_AT :]),
            rtol=LOSS_RTOL,
            atol=0,
        )
        _assert_close_params(rank["resumed_params"], rank["params"])


def test_an_engine_built_on_gathered_fsdp2_parameters_is_refused(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert "reshard_model" in rank["gathered"]


def test_ranks_that_draw_differently_raise(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert rank["mismatch"] is not None and "drew different" in rank["mismatch"]


# DDP ---------------------------------------------------------------------------------------------


def test_ddp_ranks_hold_identical_parameters_equal_to_one_process(ddp_ranks, reference):
    first, second = ddp_ranks
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    for rank in ddp_ranks:
        assert rank["history"] == reference["history"]
        torch.testing.assert_close(
            torch.tensor(rank["losses"]), torch.tensor(reference["losses"]), rtol=LOSS_RTOL, atol=0
        )
        _assert_close_params(rank["params"], reference["params"])


def test_ddp_leaves_frozen_blocks_without_grads(ddp_ranks):
    for rank in ddp_ranks:
        assert rank["frozen_grads_none"] == [True] * workers.STEPS


def test_ddp_built_wrong_is_refused(ddp_ranks):
    for rank in ddp_ranks:
        assert "find_unused_parameters=True" in rank["refusals"]["no_unused"]
        assert "frozen when DDP was built" in rank["refusals"]["frozen_at_wrap"]


def test_trainer_with_lisa_callback_under_ddp_equals_one_process(ddp_ranks):
    expected = workers.trainer_run(per_device_batch=workers.GLOBAL_BATCH)
    first, second = (rank["trainer"] for rank in ddp_ranks)
    assert first["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    assert first["history"] == second["history"] == expected["history"]
    torch.testing.assert_close(
        torch.tensor(first["losses"]), torch.tensor(expected["losses"]), rtol=LOSS_RTOL, atol=0
    )
    _assert_close_params(first["params"], expected["params"])


def test_trainer_under_ddp_needs_find_unused_parameters_and_then_checkpoints(ddp_ranks):
    for rank in ddp_ranks:
        assert "ddp_find_unused_parameters=True" in rank["trainer_default_with_checkpointing"]
        assert len(rank["trainer_checkpointed_losses"]) == 2


# one process: what is refused without starting ranks --------------------------------------------


def test_deepspeed_is_refused_naming_fsdp2(tiny_llama):
    from accelerate.utils.deepspeed import DeepSpeedOptimizerWrapper

    model = tiny_llama()
    # accelerate's wrapper of a DeepSpeed optimizer, as the Trainer hands it to callbacks
    # (built without an Accelerator: only its class and .optimizer are looked at).
    wrapped = DeepSpeedOptimizerWrapper.__new__(DeepSpeedOptimizerWrapper)
    wrapped.optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match=r"DeepSpeed.*FSDP2"):
        Lisa(model, wrapped, LisaConfig(gamma=1))
    model.model.layers[0].self_attn.q_proj.weight.ds_id = 0  # how ZeRO-3 marks a parameter
    with pytest.raises(ValueError, match="fully_shard"):
        check_model_wrapper(model)


def test_fsdp1_is_refused_naming_fsdp2(tiny_llama):
    model = tiny_llama()

    class FullyShardedDataParallel(torch.nn.Module):  # FSDP1 is found by its class name
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(ValueError, match=r"FSDP1.*shard_model"):
        check_model_wrapper(FullyShardedDataParallel(model))


def test_lisa_callback_refuses_a_deepspeed_trainer(tiny_llama):
    from types import SimpleNamespace

    from lisa.callback import LisaCallback

    model = tiny_llama()
    # TrainingArguments(deepspeed=...) needs deepspeed installed; the callback reads the field.
    args = SimpleNamespace(deepspeed={"zero_optimization": {"stage": 3}})
    callback = LisaCallback(LisaConfig(gamma=1))
    with pytest.raises(ValueError, match=r"DeepSpeed.*fsdp_version"):
        callback.on_train_begin(
            args, None, None, model=model, optimizer=torch.optim.AdamW(model.parameters())
        )


def test_lisa_estimate_per_rank_bytes_equal_each_rank_of_a_real_fsdp2_run(fsdp2_ranks):
    """lisa estimate --fsdp W reports the largest rank's shard; the smaller rank holds less."""
    from lisa.config import LisaConfig
    from lisa_apps.estimate import Setup, estimate

    config = workers.tiny_model().config
    assert isinstance(workers.CONFIG, LisaConfig) and workers.CONFIG.gamma == 1
    row = estimate(config, [Setup("lisa", "float32", gamma=1, fsdp_ranks=WORLD)])[0]
    keys = ("parameter_bytes", "grad_bytes", "optimizer_state_bytes")
    assert {key: row[key] for key in keys} == fsdp2_ranks[0]["held_after_last_step"]
    for key in keys:
        assert fsdp2_ranks[1]["held_after_last_step"][key] <= row[key]
