"""A plain training loop for one or several processes: the FSDP2 path of ``lisa train``.

transformers.Trainer on the CPU cannot shard with FSDP2 (accelerate then runs DDP), so the
sharded runs of :func:`lisa_apps.training.finetune` train here: the model is sharded with
:func:`lisa.distributed.shard_model`, AdamW is built over the sharded parameters, and LISA
switches through :class:`lisa.engine.Lisa`. The loop follows the Trainer's settings, so they
mean the same on both paths: AdamW with weight decay on the parameters the Trainer decays (not
biases and norm weights), the named schedule from ``transformers.get_scheduler`` with the same
warm-up and length (epochs counted as the Trainer counts them), gradient accumulation and
clipping at ``max_grad_norm``; it writes the same log rows (the learning rate logged at a step
is the one that step used, as the Trainer logs it), so the two paths share evaluation and
result files.

Every step takes ``grad_accum`` global micro-batches of ``batch_size`` examples from a seeded
permutation; rank r of W takes its r-th contiguous slice of each. The loss is the global token
mean over the step,

    loss = sum over the step's micro-batches of -log p(label token) / number of label tokens,

so each rank backpropagates its local sum divided by the global count (times W: FSDP2 and DDP
average gradients over the ranks). A run on W ranks therefore equals a one-process run on the
same global batches up to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from diagnostics.runtime import autocast
from lisa.engine import Lisa
from lisa_apps.data import IGNORE_INDEX, DataCollator, model_inputs
from lisa_apps.training.config import FinetuneConfig
from lisa_apps.training.distributed import device_mesh, rank_and_world

__all__ = [
    "LoopRun",
    "global_batches",
    "optimizer_parameter_groups",
    "save_full_model",
    "sharding_options",
    "train_loop",
]

logger = logging.getLogger(__name__)


@dataclass
class LoopRun:
    """What :func:`train_loop` produced (the Trainer path fills the same fields).

    Attributes:
        model: the trained model (sharded under FSDP2).
        log_history: one row per step: step, loss (global), grad_norm, learning_rate, epoch and,
            for LISA, lisa_active_blocks and lisa_freed_bytes.
        training_loss: mean of the per-step global losses.
        optimizer: the AdamW that trained it (its state is this rank's).
        lisa: the LISA engine, or None.
        first_step: the steps already taken when this process started (a resumed run's
            checkpoint step; 0 otherwise).
    """

    model: Any
    log_history: pd.DataFrame
    training_loss: float
    optimizer: torch.optim.Optimizer
    lisa: Lisa | None
    first_step: int = 0


def global_batches(num_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices of each step's global batch: consecutive slices of seeded permutations.

    Example:
        >>> global_batches(5, 2, 3, seed=0)
        [[2, 4], [3, 0], [1, 4]]
    """
    rng = np.random.default_rng(seed)
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(num_examples).tolist())
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def _label_tokens(labels: torch.Tensor) -> torch.Tensor:
    # Position t predicts token t+1, so the first label of each row is never scored.
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def _local_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**model_inputs(batch)).logits  # packed batches bring position_ids, no mask
    shifted_logits = logits[:, :-1].float()  # (batch, length-1, vocab)
    shifted_labels = batch["labels"][:, 1:]  # (batch, length-1)
    return torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _all_reduce_sum(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(value)
    return value


def train_loop(
    model,
    train_features: Sequence[dict],
    collator: DataCollator,
    config: FinetuneConfig,
    *,
    device: torch.device,
    precision: str,
    progress: bool = False,
    writer=None,
    held_out=None,
    checkpoint_dir=None,
    resume_from=None,
    folder=None,
) -> LoopRun:
    """Train ``model`` for ``config.steps`` steps, sharded with FSDP2 inside a process group.

    Args:
        model: the prepared model (in its precision, parameters that train requiring grad; a
            peft model for LoRA), on ``device``, or already sharded. Sharded in place (each
            unit's shard moved to ``device``) when a process group is initialised and
            ``config.distributed == "fsdp2"``.
        train_features: tokenised training examples.
        collator: pads a list of features into a batch.
        config: steps, batch size (global), learning rate, schedule, LISA settings, seed.
        device: this rank's device.
        precision: "float32", "bf16-mixed" or "bf16".
        progress: show a tqdm bar on rank 0.
        writer: receives every log row (``writer.log(row)``), e.g. a
            :class:`lisa_apps.training.tracking.TensorBoardWriter` on rank 0; None for none.
        checkpoint_dir: where ``checkpoint-N`` folders go every ``config.save_steps`` steps
            (:mod:`lisa_apps.training.dcp`); every rank passes it.
        resume_from: a ``checkpoint-N`` folder this loop wrote on as many ranks: training
            continues after its step with its weights, optimizer, schedule, RNG and LISA state.
        folder: rank 0's run folder, where each checkpoint is recorded before it is written.
        held_out: a :class:`lisa_apps.training.held_out.HeldOutCurve` scored after each step
            (every rank takes part); None for none.

    Returns:
        A :class:`LoopRun`.

    Example:
        >>> from lisa_apps.data import make_math_problems, tokenize_examples
        >>> from lisa_apps.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> features = tokenize_examples(make_math_problems(4), tokenizer, max_length=384)
        >>> run = train_loop(model, features, DataCollator(tokenizer),
        ...                  FinetuneConfig(method="ft", steps=2, batch_size=2),
        ...                  device=torch.device("cpu"), precision="float32")
        >>> run.log_history["step"].tolist()
        [1, 2]
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from lisa.distributed import reshard_model, shard_model
    from lisa_apps.training.dcp import load_checkpoint, save_checkpoint

    rank, world = rank_and_world()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} is not a multiple of the {world} ranks; each rank "
            "takes an equal slice of the global batch"
        )
    if world > 1 and config.distributed == "fsdp2" and not _is_sharded(model):
        model = shard_model(model, **sharding_options(config, device))
    reshard_model(model)  # a forward before (an evaluation) may have left units gathered
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, config), lr=config.resolved_learning_rate
    )
    lisa = Lisa(model, optimizer, config.resolved_lisa) if config.method == "lisa" else None
    steps = config.training_steps(len(train_features))
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup(steps),
        num_training_steps=steps,
    )
    first_step, rows = 0, []
    if resume_from is not None:
        first_step, rows = load_checkpoint(
            resume_from, model=model, optimizer=optimizer, scheduler=scheduler, lisa=lisa,
            rank=rank, world=world,
        )  # fmt: skip
    per_rank = config.batch_size // world
    accumulation = config.grad_accum
    micro_batches = global_batches(
        len(train_features), config.batch_size, steps * accumulation, config.seed
    )
    freed_at_last_log = 0 if lisa is None else lisa.freed_bytes_total
    bar = tqdm(
        range(first_step, steps), desc="training", disable=not progress or rank != 0, leave=False
    )
    for step in bar:
        if lisa is not None:
            lisa.begin_step(step)
        batches = []
        for batch_ids in micro_batches[step * accumulation : (step + 1) * accumulation]:
            local_ids = batch_ids[rank * per_rank : (rank + 1) * per_rank]
            batch = collator([train_features[i] for i in local_ids])
            batches.append({key: value.to(device) for key, value in batch.items()})
        # The step's label tokens over every micro-batch and rank: the loss is their mean.
        local_tokens = sum(_label_tokens(batch["labels"]) for batch in batches)
        tokens = _all_reduce_sum(local_tokens.to(device), world).clamp(min=1)
        step_sum = torch.zeros((), device=device)
        for batch in batches:
            with autocast(device, precision):
                local_sum = _local_loss_sum(model, batch)
            # DDP and FSDP2 average gradients over ranks: scale by W to get the global token mean.
            (local_sum * world / tokens).backward()
            step_sum += local_sum.detach().float()
        with_grad = [p for p in parameters if p.grad is not None]
        # max_grad_norm 0 clips nothing (as in the Trainer) but the norm is still reported.
        grad_norm = torch.nn.utils.clip_grad_norm_(
            with_grad, config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        )
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = _all_reduce_sum(step_sum, world) / tokens
        row = {
            "loss": float(loss),
            "grad_norm": float(_full(grad_norm)),
            "learning_rate": learning_rate,
            "epoch": (step + 1) * config.batch_size * accumulation / len(train_features),
            "step": step + 1,
        }
        if lisa is not None:
            row["lisa_active_blocks"] = ",".join(str(i) for i in lisa.active_blocks)
            row["lisa_freed_bytes"] = lisa.freed_bytes_total - freed_at_last_log
            freed_at_last_log = lisa.freed_bytes_total
        rows.append(row)
        if writer is not None:
            writer.log(row)
        if held_out is not None:
            held_out.step_end(model, step + 1)
            reshard_model(model)  # the evaluation's forward left FSDP2's root unit gathered
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if config.save_steps is not None and (step + 1) % config.save_steps == 0:
            name = f"checkpoint-{step + 1}"
            if folder is not None:
                folder.file(name)  # recorded first: a run killed while writing still owns it
            save_checkpoint(
                Path(checkpoint_dir) / name, step=step + 1, model=model, optimizer=optimizer,
                scheduler=scheduler, lisa=lisa, log_history=rows, rank=rank, world=world,
                total_limit=config.save_total_limit,
            )  # fmt: skip
    bar.close()
    model.eval()
    log_history = pd.DataFrame(rows)
    training_loss = float(log_history["loss"].mean()) if rows else float("nan")
    return LoopRun(model, log_history, training_loss, optimizer, lisa, first_step=first_step)


def sharding_options(config: FinetuneConfig, device: torch.device) -> dict[str, Any]:
    """The ``fully_shard`` options of a run: its device mesh and, with ``config.offload``,
    FSDP2's ``CPUOffloadPolicy`` (parameters, grads and AdamW state stay in CPU memory; each
    unit is copied to ``device`` while it computes)."""
    options: dict[str, Any] = {"mesh": device_mesh(device)}
    if config.offload:
        from torch.distributed.fsdp import CPUOffloadPolicy

        # Pinned memory speeds the copies to a GPU; without an accelerator it cannot exist.
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type != "cpu")
    return options


def optimizer_parameter_groups(model, config: FinetuneConfig) -> list[dict[str, Any]]:
    """The AdamW groups of a run, on both paths: the Trainer's two decay groups, or, with
    per-group rates or decays (``config.group_settings``), :func:`lisa.param_groups` with the
    Trainer's rule for what is not decayed."""
    if not config.group_settings:
        return _parameter_groups(model, config.weight_decay)
    from transformers import Trainer

    from lisa import param_groups

    decayed = set(Trainer.get_decay_parameter_names(None, model))
    return param_groups(
        model,
        lr=config.resolved_learning_rate,
        weight_decay=config.weight_decay,
        no_decay=lambda name, _: name not in decayed,
        **config.group_settings,
    )


def _parameter_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as transformers.Trainer builds them: decay all but biases and norm weights."""
    from transformers import Trainer

    # The Trainer's own rule (a method that does not use its instance), so both paths agree.
    decayed = set(Trainer.get_decay_parameter_names(None, model))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in named if name in decayed], "weight_decay": weight_decay},
        {"params": [p for name, p in named if name not in decayed], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def _is_sharded(model) -> bool:
    return any(hasattr(p, "placements") for p in model.parameters())


def _full(value: torch.Tensor) -> torch.Tensor:
    # clip_grad_norm_ returns a DTensor for sharded grads; its full value is the global norm.
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def save_full_model(model, tokenizer, target) -> None:
    """Save a (maybe FSDP2-sharded) model's full weights; every rank must call it.

    A sharded model is gathered one unit at a time (a block, then the rest: embedding, final
    norm, head), each unit written by rank 0 as its own safetensors shard in the model's dtype
    and freed before the next is gathered, with the ``model.safetensors.index.json`` that
    ``from_pretrained`` reads; no rank ever holds the whole model. The other ranks pass
    ``target=None``. An unsharded model, or a LoRA model (its small adapters), is saved with
    ``save_pretrained``.
    """
    if not _is_sharded(model) or hasattr(model, "peft_config"):
        state_dict = None
        if _is_sharded(model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state_dict = get_model_state_dict(model, options=options)
        if target is not None:
            model.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(target)
        return
    import json

    from safetensors.torch import save_file

    units = _export_units(model)
    weight_map: dict[str, str] = {}
    total_size = 0
    for number, names_and_tensors in enumerate(units, start=1):
        filename = f"model-{number:05d}-of-{len(units):05d}.safetensors"
        # A collective: every rank gathers the unit, rank 0 keeps and writes it.
        full = {name: _full(tensor).detach().cpu().contiguous() for name, tensor in names_and_tensors}
        if target is not None:
            Path(target).mkdir(parents=True, exist_ok=True)
            save_file(full, str(Path(target) / filename), metadata={"format": "pt"})
            for name, tensor in full.items():
                weight_map[name] = filename
                total_size += tensor.numel() * tensor.element_size()
        del full
    if target is not None:
        index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        (Path(target) / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        model.config.save_pretrained(target)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(target)
        tokenizer.save_pretrained(target)


def _export_units(model) -> list[list[tuple[str, torch.Tensor]]]:
    """The model's state in export units: one per numbered block (``...layers.3.``), then the rest.

    A tied weight appears once, under its first name (the embedding's), as save_pretrained
    writes it.
    """
    import re

    block = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3.mlp.up_proj.weight" -> "model.layers.3"
    units: dict[str, list[tuple[str, torch.Tensor]]] = {}
    rest: list[tuple[str, torch.Tensor]] = []
    every_name = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    first_names = {name for name, _ in model.named_parameters()}
    for name, tensor in model.state_dict().items():
        if name in every_name and name not in first_names:
            continue  # tied to a parameter already listed
        match = block.match(name)
        (units.setdefault(match.group(1), []) if match else rest).append((name, tensor))
    return [*units.values(), *([rest] if rest else [])]
