"""LISA in two processes (gloo on the CPU, tiny Llama): FSDP2 and DDP equal one process.

One fixture starts two ranks once (torch.multiprocessing, spawn) for every run below and the
tests read what each rank saved. "Equal" to a one-process run on the same global batches means
(``parity_failures``): the same draws, exactly; first-step gradients within GRAD_RTOL of each
tensor's largest gradient; final parameters within ``param_atol`` and per-step global losses
within ``loss_tolerance``, bounds derived below from float32 rounding and AdamW's arithmetic, so
they hold whatever order the sums run in (DDP's all-reduce, FSDP2's reduce-scatter, any CPU
kernel set). Deliberately broken runs (a rank that steps a block without the reduced gradient,
a doubled loss, a skipped step) must fail those checks. Where no sum is reordered the runs
are equal bit for bit: the two DDP ranks, and a resumed run against the uninterrupted one.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from lisa import LayerMap, Lisa, LisaConfig, minimum_optimizer_state_bytes
from lisa.distributed import check_model_wrapper, shard_units
from tests.lisa import distributed_workers as workers
from tests.numerics import U32, adam_ratio_bound

WORLD = 2
# First-step gradients: the same parameters and data, the sums in another order. Two orders of
# a sum of n float32 terms differ by at most 2(n - 1)u * sum|x| (Higham, "Accuracy and
# Stability of Numerical Algorithms", 2002, eq. 4.4, once per order). A gradient element here
# ends a chain of sums of under SUM_TERMS terms in all (the tokens of a global batch: 48 in the
# plain loop, <= 4 x 335 in the Trainer run; the vocabulary, <= 320; per block the widths,
# <= 64, and the positions, <= 335), and sum|x| is allowed CANCELLATION times the tensor's
# largest |g|. Measured: 3e-7 (avx2 against default, DDP and FSDP2 against one process).
SUM_TERMS = 4096
CANCELLATION = 10
GRAD_RTOL = 2 * SUM_TERMS * U32 * CANCELLATION  # 4.9e-3 of the tensor's largest |g|
# AdamW's step lr * m / (sqrt(v) + eps) moves by at most (1 + R) lr / eps times the largest
# change in the gradients it averages (m and sqrt(v) are weighted means of g and |g|, each moving
# by at most that change; R = adam_ratio_bound(T) >= |m| / sqrt(v), 1.016 over six steps), and
# weight decay shrinks a difference; so T steps differ by at most
# T * (1 + R) lr / eps * GRAD_RTOL * G, G the largest |g|
# of the run, taken as GRADIENT_GROWTH times the first step's (measured over the plain loop's
# six steps: 0.15 to 0.19, first 0.19). Feedback of earlier differences through later
# gradients is second order (lr / eps = 0.01) and left out: the measured difference is 4e-9.
GRADIENT_GROWTH = 2
# A loss moves by at most sum|dL/dp| * max|dp| (first order) when the parameters differ: sum|g|
# of the first step times GRADIENT_GROWTH (measured 74 to 85 over six steps, first 79), plus the
# rounding of its own sums (GRAD_RTOL, the same chains).


def _largest_gradient(run: dict) -> float:
    return max(float(g.abs().max()) for g in run["grads"].values())


def param_atol(reference: dict, steps: int) -> float:
    """Largest parameter difference float32 rounding can cause after ``steps`` AdamW steps."""
    step_bound = (1 + adam_ratio_bound(steps)) * workers.LEARNING_RATE / workers.ADAM_EPS
    return steps * step_bound * GRAD_RTOL * GRADIENT_GROWTH * _largest_gradient(reference)


def loss_tolerance(reference: dict, steps: int) -> tuple[float, float]:
    """(rtol, atol) of a step's global loss: its own rounding and the parameters' difference."""
    gradient_l1 = sum(float(g.abs().sum()) for g in reference["grads"].values())
    return GRAD_RTOL, GRADIENT_GROWTH * gradient_l1 * param_atol(reference, steps)


def parity_failures(run: dict, reference: dict) -> list[str]:
    """Which of draws, grads, params and losses of ``run`` differ from ``reference``'s.

    Both are ``workers.parity_run`` results (or ``workers.trainer_run``'s) on the same batches.
    """
    failures = []
    if run["history"] != reference["history"]:
        failures.append("draws")
    grads = run["grads"].keys() == reference["grads"].keys() and all(
        float((run["grads"][n] - g).abs().max()) <= GRAD_RTOL * float(g.abs().max())
        for n, g in reference["grads"].items()
    )
    if not grads:
        failures.append("grads")
    steps = len(reference["losses"])
    atol = param_atol(reference, steps)
    if run["params"].keys() != reference["params"].keys() or any(
        float((run["params"][n] - p).abs().max()) > atol for n, p in reference["params"].items()
    ):
        failures.append("params")
    rtol, loss_atol = loss_tolerance(reference, steps)
    if len(run["losses"]) != steps or any(
        abs(a - b) > loss_atol + rtol * abs(b)
        for a, b in zip(run["losses"], reference["losses"], strict=True)
    ):
        failures.append("losses")
    return failures


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' results of every run: FSDP2 first, then DDP, in one spawn (saves seconds)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.start_processes(
        workers.both_workers, args=(WORLD, _free_port(), str(folder)), nprocs=WORLD,
        start_method="spawn",
    )  # fmt: skip
    return [
        {name: torch.load(folder / f"{name}-rank{r}.pt", weights_only=False) for name in ("fsdp2", "ddp")}
        for r in range(WORLD)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fsdp2_ranks(ranks):
    return [rank["fsdp2"] for rank in ranks]


@pytest.fixture(scope="module")
def ddp_ranks(ranks):
    return [rank["ddp"] for rank in ranks]


@pytest.fixture(scope="module")
def reference():
    return workers.reference_run()


@pytest.fixture(scope="module")
def trainer_reference():
    return workers.trainer_run(per_device_batch=workers.GLOBAL_BATCH)


def _rejections(broken_runs, reference) -> set[str]:
    return {check for run in broken_runs for check in parity_failures(run, reference)}


# What each deliberately broken run must fail, on some rank.
EXPECTED_REJECTIONS = {
    "unreduced_block": {"grads", "params"},  # the last rank's block steps with zero grads
    "doubled_loss": {"grads", "params"},  # AdamW's step depends on the scale at eps = 1
    "skipped_step": {"params"},  # gradients of the first step are right
}


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


def test_a_single_block_is_its_own_unit_not_the_list_that_holds_it(tiny_llama):
    # The ModuleList of one block holds only that block's parameters; fully_shard refuses a
    # container without a forward, so the unit must be the block itself.
    model = tiny_llama(num_blocks=1)
    units = dict(shard_units(model))
    assert [type(m).__name__ for m in units["block.0"]] == ["LlamaDecoderLayer"]


@pytest.mark.numerics
def test_fsdp2_ranks_draw_alike_and_equal_one_process(fsdp2_ranks, reference):
    assert len(reference["history"]) == 3  # three periods: the run switched
    for rank in fsdp2_ranks:
        assert parity_failures(rank, reference) == []


@pytest.mark.numerics
@pytest.mark.parametrize("fault", workers.FAULTS)
def test_fsdp2_parity_check_rejects_a_broken_run(fsdp2_ranks, reference, fault):
    broken = [rank["broken"][fault] for rank in fsdp2_ranks]
    assert _rejections(broken, reference) >= EXPECTED_REJECTIONS[fault]


@pytest.mark.numerics
def test_lisa_callback_on_the_sharded_model_equals_one_process(fsdp2_ranks, reference):
    for rank in fsdp2_ranks:
        assert parity_failures(rank["callback"], reference) == []


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


@pytest.mark.numerics
def test_fsdp2_resume_reproduces_draws_losses_and_parameters(fsdp2_ranks):
    """Bit for bit: the resumed steps run the same sums in the same order."""
    for rank in fsdp2_ranks:
        assert rank["resumed_history"] == rank["history"]
        assert rank["resumed_losses"] == rank["losses"][workers.RESUME_AT :]
        assert rank["resumed_params"].keys() == rank["params"].keys()
        for name, value in rank["params"].items():
            assert torch.equal(rank["resumed_params"][name], value), name


def test_an_engine_built_on_gathered_fsdp2_parameters_is_refused(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert "reshard_model" in rank["gathered"]


def test_ranks_that_draw_differently_raise(fsdp2_ranks):
    for rank in fsdp2_ranks:
        assert rank["mismatch"] is not None and "drew different" in rank["mismatch"]


# DDP ---------------------------------------------------------------------------------------------


def _ranks_equal(first: dict, second: dict) -> bool:
    """Bit for bit: both ranks step the same all-reduced gradients."""
    return first.keys() == second.keys() and all(
        torch.equal(value, second[name]) for name, value in first.items()
    )


@pytest.mark.numerics
def test_ddp_ranks_hold_identical_parameters_equal_to_one_process(ddp_ranks, reference):
    first, second = ddp_ranks
    assert _ranks_equal(first["params"], second["params"])
    for rank in ddp_ranks:
        assert parity_failures(rank, reference) == []


@pytest.mark.numerics
@pytest.mark.parametrize("fault", workers.FAULTS)
def test_ddp_parity_check_rejects_a_broken_run(ddp_ranks, reference, fault):
    broken = [rank["broken"][fault] for rank in ddp_ranks]
    assert _rejections(broken, reference) >= EXPECTED_REJECTIONS[fault]
    if fault == "unreduced_block":  # the ranks part ways
        assert not _ranks_equal(broken[0]["params"], broken[1]["params"])


def test_ddp_leaves_frozen_blocks_without_grads(ddp_ranks):
    for rank in ddp_ranks:
        assert rank["frozen_grads_none"] == [True] * workers.STEPS


def test_ddp_built_wrong_is_refused(ddp_ranks):
    for rank in ddp_ranks:
        assert "find_unused_parameters=True" in rank["refusals"]["no_unused"]
        assert "frozen when DDP was built" in rank["refusals"]["frozen_at_wrap"]


@pytest.mark.numerics
def test_trainer_with_lisa_callback_under_ddp_equals_one_process(ddp_ranks, trainer_reference):
    first, second = (rank["trainer"] for rank in ddp_ranks)
    assert first["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    assert _ranks_equal(first["params"], second["params"])
    for run in (first, second):
        assert parity_failures(run, trainer_reference) == []


@pytest.mark.numerics
@pytest.mark.parametrize("fault", workers.TRAINER_FAULTS)
def test_trainer_parity_check_rejects_a_broken_run(ddp_ranks, trainer_reference, fault):
    broken = [rank["trainer_broken"][fault] for rank in ddp_ranks]
    assert _rejections(broken, trainer_reference) >= EXPECTED_REJECTIONS[fault]


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
