"""Rank bodies for tests/lisa/test_distributed.py: 2 gloo ranks on the CPU, tiny Llama.

Started with torch.multiprocessing (spawn), so this module must be importable by name from the
repository root. Each body writes its rank's results with torch.save; the tests compare them
with each other and with a one-process run of the same plain loop (``run_steps`` with world 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lisa import Lisa, LisaConfig, memory_report, minimum_optimizer_state_bytes
from lisa.memory import optimizer_state_bytes
from lisa_apps.tiny import build_tiny_model

STEPS = 6
RESUME_AT = 3
GLOBAL_BATCH = 4
LENGTH = 12
VOCAB = 128
LEARNING_RATE = 1e-2
# AdamW's eps in every compared run: at 1 (not 1e-8) a step is lr * m / (sqrt(v) + 1), which
# moves by about 2 * lr / eps times a change in the gradients, so float32 sums in another
# order move the parameters by a bounded amount (the derivation is in test_distributed.py). At
# eps 1e-8 a rounding difference in a near-zero gradient can flip a step of lr per element.
ADAM_EPS = 1.0
# Deliberately broken runs the parity checks must reject (see ``run_steps``).
FAULTS = ("unreduced_block", "doubled_loss", "skipped_step")
SKIPPED_STEP = 3
# gamma 1 of 4 blocks, a new draw every 2 steps: three periods in six steps.
CONFIG = LisaConfig(gamma=1, interval=2, seed=3)


def tiny_model(seed: int = 0):
    return build_tiny_model(
        "tiny-llama", num_blocks=4, hidden=32, vocab_size=VOCAB, tie=False, seed=seed,
        max_positions=64,
    )  # fmt: skip


def make_batches(steps: int = STEPS, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Global batches whose rows score different numbers of tokens (prompt prefixes masked).

    Unequal counts per rank make the global token mean differ from a mean of rank means, so
    the equality with one process tests the loss normalisation too.
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        input_ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, LENGTH), generator=generator)
        labels = input_ids.clone()
        prefixes = torch.randint(1, LENGTH - 2, (GLOBAL_BATCH,), generator=generator)
        for row, prefix in enumerate(prefixes.tolist()):
            labels[row, :prefix] = -100
        batches.append(
            {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
        )
    return batches


def adamw(model) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS)


def zero_active_block_grads(lisa) -> None:
    """What a rank that skipped the gradient all-reduce of its active blocks would step with."""
    for block in lisa.active_blocks:
        for _, parameter in lisa.layer_map.parameters(f"block.{block}"):
            if parameter.grad is not None:
                parameter.grad.zero_()


def run_steps(
    forward, optimizer, lisa, batches, rank: int = 0, world: int = 1, on_step=None,
    fault: str | None = None,
):  # fmt: skip
    """The plain loop of docs/scaling.md: returns the global loss of every step.

    Rank r takes rows [r * B/W, (r+1) * B/W) of each global batch of B; the loss is the global
    token mean (each rank backpropagates its token sum / global count, times W because DDP and
    FSDP2 average gradients). ``fault`` breaks the run on purpose (one of FAULTS): the last rank
    steps its active block with zero gradients ("unreduced_block"), every rank backpropagates
    twice the loss it reports ("doubled_loss"), or step SKIPPED_STEP is not taken
    ("skipped_step").
    """
    assert fault in (None, *FAULTS), fault
    losses = []
    for index, batch in enumerate(batches):
        lisa.begin_step()
        per_rank = batch["input_ids"].shape[0] // world
        local = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
        labels = local["labels"][:, 1:]
        tokens = (labels != -100).sum()
        if world > 1:
            torch.distributed.all_reduce(tokens)
        logits = forward(input_ids=local["input_ids"], attention_mask=local["attention_mask"]).logits
        local_sum = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
        scale = 2 if fault == "doubled_loss" else 1
        (local_sum * scale * world / tokens).backward()
        if fault == "unreduced_block" and rank == world - 1:
            zero_active_block_grads(lisa)
        if not (fault == "skipped_step" and index == SKIPPED_STEP):
            optimizer.step()
        if on_step is not None:
            on_step()  # grads and the step's optimizer state are both there
        optimizer.zero_grad(set_to_none=True)
        total = local_sum.detach()
        if world > 1:
            torch.distributed.all_reduce(total)
        losses.append(float(total / tokens))
    return losses


def parity_run(model, forward, optimizer, lisa, batches, rank=0, world=1, on_step=None, fault=None):
    """``run_steps`` and what the parity checks compare: losses, draws, first-step grads, params.

    The first step's gradients are full tensors (FSDP2's are gathered), taken before any
    parameter differs between two runs.
    """
    first_grads: dict[str, torch.Tensor] = {}

    def record() -> None:
        if not first_grads:
            for name, parameter in model.named_parameters():
                if parameter.grad is not None:
                    grad = parameter.grad
                    first_grads[name] = (
                        grad.full_tensor() if hasattr(grad, "full_tensor") else grad
                    ).clone()
        if on_step is not None:
            on_step()

    losses = run_steps(forward, optimizer, lisa, batches, rank, world, record, fault)
    return {"losses": losses, "history": lisa.history, "grads": first_grads, "params": _full(model)}


def reference_run() -> dict:
    """One process, no wrapper: the run every distributed one must equal."""
    model = tiny_model()
    optimizer = adamw(model)
    return parity_run(model, model, optimizer, Lisa(model, optimizer, CONFIG), make_batches())


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)


def _full(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }


def _sharded(seed: int = 0):
    from lisa.distributed import shard_model

    model = shard_model(tiny_model(seed))
    optimizer = adamw(model)
    return model, optimizer, Lisa(model, optimizer, CONFIG)


class CallbackDriver:
    """Calls LisaCallback's Trainer events around a plain loop (begin_step = on_step_begin)."""

    def __init__(self, model, optimizer, folder: str) -> None:
        from transformers import TrainerControl, TrainerState, TrainingArguments

        from lisa.callback import LisaCallback

        self.model, self.optimizer = model, optimizer
        self.args = TrainingArguments(output_dir=folder, use_cpu=True, report_to=[])
        self.state, self.control = TrainerState(), TrainerControl()
        self.callback = LisaCallback(CONFIG)
        self.callback.on_train_begin(
            self.args, self.state, self.control, model=model, optimizer=optimizer
        )

    def begin_step(self) -> None:
        self.callback.on_step_begin(
            self.args, self.state, self.control, model=self.model, optimizer=self.optimizer
        )
        self.state.global_step += 1

    @property
    def history(self) -> list:
        return self.callback.lisa.history


def both_workers(rank: int, world: int, port: int, folder: str) -> None:
    """``fsdp2_worker`` then ``ddp_worker`` in one process group: one spawn for both."""
    _join(rank, world, port)
    fsdp2_worker(rank, world, folder)
    ddp_worker(rank, world, folder)
    torch.distributed.destroy_process_group()


def fsdp2_worker(rank: int, world: int, folder: str) -> None:
    """FSDP2 plain loop: losses, draws, state after every step, resume, a mismatched draw."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    from lisa.distributed import reshard_model, shard_model

    batches = make_batches()
    results: dict = {}

    model, optimizer, lisa = _sharded()
    state_after_step: list[tuple[int, int]] = []

    def record_state() -> None:
        state_after_step.append(
            (
                optimizer_state_bytes(optimizer),
                minimum_optimizer_state_bytes(lisa.trainable_parameters()),
            )
        )
        # After a step with grads still held: what lisa estimate --fsdp predicts for a rank.
        total = memory_report(model, optimizer).set_index("group").loc["total"]
        results["held_after_last_step"] = {
            key: int(total[key]) for key in ("parameter_bytes", "grad_bytes", "optimizer_state_bytes")
        }

    results.update(parity_run(model, model, optimizer, lisa, batches, rank, world, record_state))
    results["state_after_step"] = state_after_step
    report = memory_report(model, optimizer)
    results["scope"] = report.attrs["scope"]
    results["report_state_bytes"] = int(report.set_index("group").loc["total", "optimizer_state_bytes"])

    # Resume: three steps, a full checkpoint on disk, a fresh model from another seed, three more.
    model, optimizer, lisa = _sharded()
    run_steps(model, optimizer, lisa, batches[:RESUME_AT], rank, world)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    checkpoint = Path(folder) / "checkpoint.pt"
    if rank == 0:
        torch.save(
            {"model": model_state, "optimizer": optimizer_state, "lisa": lisa.state_dict()},
            checkpoint,
        )
    torch.distributed.barrier()
    del model, optimizer, lisa
    model, optimizer, lisa = _sharded(seed=1)
    saved = torch.load(checkpoint, weights_only=False)
    # strict=False: LISA's frozen blocks have no optimizer state to load, by design.
    set_state_dict(
        model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
        options=StateDictOptions(full_state_dict=True, strict=False),
    )  # fmt: skip
    lisa.load_state_dict(saved["lisa"])
    results["resumed_losses"] = run_steps(model, optimizer, lisa, batches[RESUME_AT:], rank, world)
    results["resumed_history"] = lisa.history
    results["resumed_params"] = _full(model)

    results["broken"] = {}
    for fault in FAULTS:
        model, optimizer, lisa = _sharded()
        results["broken"][fault] = parity_run(
            model, model, optimizer, lisa, batches, rank, world, fault=fault
        )

    # LisaCallback drives the engine on the sharded model as a Trainer would (accelerate runs
    # no FSDP on the CPU, so its events are called here by hand, once per optimizer step).
    model, optimizer, _ = _sharded()
    driver = CallbackDriver(model, optimizer, folder)
    results["callback"] = parity_run(model, model, optimizer, driver, batches, rank, world)

    # An evaluation forward leaves the root unit gathered: an engine built then is refused.
    model = shard_model(tiny_model())
    with torch.no_grad():
        model(input_ids=batches[0]["input_ids"][:1])
    try:
        Lisa(model, torch.optim.AdamW(model.parameters()), CONFIG)
        results["gathered"] = None
    except ValueError as error:
        results["gathered"] = str(error)
    reshard_model(model)
    Lisa(model, torch.optim.AdamW(model.parameters()), CONFIG)  # accepted once resharded

    # Ranks that draw differently must stop at the first switch.
    model = shard_model(tiny_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    mismatched = Lisa(
        model, optimizer, LisaConfig(gamma=1, sampler="fixed", sampler_options={"blocks": [rank]})
    )
    try:
        mismatched.begin_step()
        results["mismatch"] = None
    except RuntimeError as error:
        results["mismatch"] = str(error)
    torch.save(results, Path(folder) / f"fsdp2-rank{rank}.pt")


def ddp_worker(rank: int, world: int, folder: str) -> None:
    """DDP plain loop, the wrappers Lisa refuses, and Trainer + LisaCallback under DDP."""
    from torch.nn.parallel import DistributedDataParallel

    results: dict = {}
    batches = make_batches()
    model = tiny_model()
    wrapped = DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = adamw(model)
    lisa = Lisa(wrapped, optimizer, CONFIG)
    frozen_grads: list[bool] = []

    def check_frozen() -> None:
        trained = {id(p) for p in lisa.trainable_parameters()}
        frozen_grads.append(
            all(p.grad is None for p in model.parameters() if id(p) not in trained)
        )

    results.update(parity_run(model, wrapped, optimizer, lisa, batches, rank, world, check_frozen))
    results["frozen_grads_none"] = frozen_grads
    results["broken"] = {}
    for fault in FAULTS:
        model = tiny_model()
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)
        optimizer = adamw(model)
        lisa = Lisa(wrapped, optimizer, CONFIG)
        results["broken"][fault] = parity_run(
            model, wrapped, optimizer, lisa, batches, rank, world, fault=fault
        )

    refusals = {}
    for case in ("no_unused", "frozen_at_wrap"):
        other = tiny_model()
        if case == "frozen_at_wrap":
            for p in other.model.layers[1].parameters():
                p.requires_grad_(False)
        other_wrapped = DistributedDataParallel(
            other, find_unused_parameters=case == "frozen_at_wrap"
        )
        for p in other.parameters():
            p.requires_grad_(True)
        try:
            Lisa(other_wrapped, torch.optim.AdamW(other.parameters()), CONFIG)
            refusals[case] = None
        except ValueError as error:
            refusals[case] = str(error)
    results["refusals"] = refusals

    results["trainer"] = trainer_run(per_device_batch=GLOBAL_BATCH // world)
    results["trainer_broken"] = {
        fault: trainer_run(per_device_batch=GLOBAL_BATCH // world, fault=fault)
        for fault in TRAINER_FAULTS
    }
    # Activation checkpointing: the Trainer's default turns find_unused_parameters off.
    try:
        trainer_run(per_device_batch=1, max_steps=1, find_unused=None, checkpointing=True)
        results["trainer_default_with_checkpointing"] = None
    except ValueError as error:
        results["trainer_default_with_checkpointing"] = str(error)
    checkpointed = trainer_run(per_device_batch=1, max_steps=2, checkpointing=True)
    results["trainer_checkpointed_losses"] = checkpointed["losses"]
    torch.save(results, Path(folder) / f"ddp-rank{rank}.pt")


TRAINER_FAULTS = ("unreduced_block", "doubled_loss")


def _trainer_probe(lisa_callback, fault: str | None):
    """A callback that keeps the first step's grads and applies ``fault`` before every step."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.first_grads: dict[str, torch.Tensor] = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if fault == "unreduced_block" and args.process_index == args.world_size - 1:
                zero_active_block_grads(lisa_callback.lisa)
            if fault == "doubled_loss":  # the grads of twice the loss the Trainer logs
                for parameter in model.parameters():
                    if parameter.grad is not None:
                        parameter.grad.mul_(2)
            if state.global_step == 0:
                self.first_grads = {
                    n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
                }

    return Probe()


def trainer_run(
    per_device_batch: int,
    max_steps: int = 4,
    find_unused: bool | None = True,
    checkpointing: bool = False,
    fault: str | None = None,
) -> dict:
    """transformers.Trainer with LisaCallback; under torch.distributed env vars it runs DDP.

    AdamW's eps is ADAM_EPS and gradients are not clipped: clipping rescales the gradient to
    norm 1 here, which would hide a wrong loss scale from the comparison. ``fault`` (one of
    TRAINER_FAULTS) breaks the run on purpose, as in ``run_steps``.
    """
    import dataclasses
    import tempfile

    from transformers import Trainer, TrainingArguments

    from lisa.callback import LisaCallback
    from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
    from lisa_apps.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model("tiny-llama", num_blocks=4, hidden=32, seed=0, max_positions=384)
    features = tokenize_examples(make_math_problems(16, seed=0), tokenizer, max_length=384)
    callback = LisaCallback(CONFIG)
    probe = _trainer_probe(callback, fault)
    # transformers 5 renamed gradient_checkpointing* to activation_checkpointing* (the old
    # names warn); pyproject allows 4.56, which has only the old ones.
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in fields else "gradient"
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, max_steps=max_steps,
            per_device_train_batch_size=per_device_batch, learning_rate=LEARNING_RATE,
            adam_epsilon=ADAM_EPS, max_grad_norm=0.0,
            lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
            use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, remove_unused_columns=False,
            ddp_find_unused_parameters=find_unused,
            **{f"{prefix}_checkpointing": checkpointing,
               f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}},
        )  # fmt: skip
        trainer = Trainer(
            model, args, train_dataset=features, data_collator=DataCollator(tokenizer),
            callbacks=[callback, probe],
        )  # fmt: skip
        trainer.train()
    return {
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
        "history": callback.lisa.history,
        "grads": probe.first_grads,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "parallel_mode": str(args.parallel_mode),
    }
