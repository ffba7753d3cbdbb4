"""A plain training loop for one or several processes: the FSDP2 path of ``lisa train``.

transformers.Trainer on the CPU cannot shard with FSDP2 (accelerate then runs DDP), so the
sharded runs of :func:`lisa_apps.training.finetune` train here: the model is sharded with
:func:`lisa.distributed.shard_model`, AdamW is built over the sharded parameters, and LISA
switches through :class:`lisa.engine.Lisa`. The loop follows the Trainer's settings (AdamW,
the named learning-rate schedule, gradient clipping at 1.0) and writes the same log rows, so
the two paths share evaluation and result files.

Every step takes a global batch of ``batch_size`` examples from a seeded permutation; rank r
of W takes its r-th contiguous slice. The loss is the global token mean,

    loss = sum over the global batch of -log p(label token) / number of label tokens,

so each rank backpropagates its local sum divided by the global count (times W: FSDP2 and DDP
average gradients over the ranks). A run on W ranks therefore equals a one-process run on the
same global batches up to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    "MAX_GRAD_NORM",
    "LoopRun",
    "global_batches",
    "save_full_model",
    "train_loop",
]

logger = logging.getLogger(__name__)

# transformers.TrainingArguments' default max_grad_norm, so both paths clip alike.
MAX_GRAD_NORM = 1.0


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
    """

    model: Any
    log_history: pd.DataFrame
    training_loss: float
    optimizer: torch.optim.Optimizer
    lisa: Lisa | None


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

    rank, world = rank_and_world()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} is not a multiple of the {world} ranks; each rank "
            "takes an equal slice of the global batch"
        )
    if world > 1 and config.distributed == "fsdp2" and not _is_sharded(model):
        model = shard_model(model, mesh=device_mesh(device))
    reshard_model(model)  # a forward before (an evaluation) may have left units gathered
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.resolved_learning_rate, weight_decay=config.weight_decay
    )
    lisa = Lisa(model, optimizer, config.resolved_lisa) if config.method == "lisa" else None
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=config.steps,
    )
    per_rank = config.batch_size // world
    batches = global_batches(len(train_features), config.batch_size, config.steps, config.seed)
    rows: list[dict[str, Any]] = []
    freed_at_last_log = 0
    bar = tqdm(batches, desc="training", disable=not progress or rank != 0, leave=False)
    for step, batch_ids in enumerate(bar):
        if lisa is not None:
            lisa.begin_step(step)
        local_ids = batch_ids[rank * per_rank : (rank + 1) * per_rank]
        batch = collator([train_features[i] for i in local_ids])
        batch = {key: value.to(device) for key, value in batch.items()}
        tokens = _all_reduce_sum(_label_tokens(batch["labels"]).to(device), world)
        with autocast(device, precision):
            local_sum = _local_loss_sum(model, batch)
        # DDP and FSDP2 average gradients over ranks: scale by W to get the global token mean.
        (local_sum * world / tokens.clamp(min=1)).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in parameters if p.grad is not None], MAX_GRAD_NORM
        )
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = _all_reduce_sum(local_sum.detach().float(), world) / tokens.clamp(min=1)
        row = {
            "loss": float(loss),
            "grad_norm": float(_full(grad_norm)),
            "learning_rate": learning_rate,
            "epoch": (step + 1) * config.batch_size / len(train_features),
            "step": step + 1,
        }
        if lisa is not None:
            row["lisa_active_blocks"] = ",".join(str(i) for i in lisa.active_blocks)
            row["lisa_freed_bytes"] = lisa.freed_bytes_total - freed_at_last_log
            freed_at_last_log = lisa.freed_bytes_total
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    bar.close()
    model.eval()
    log_history = pd.DataFrame(rows)
    training_loss = float(log_history["loss"].mean()) if rows else float("nan")
    return LoopRun(model, log_history, training_loss, optimizer, lisa)


def _is_sharded(model) -> bool:
    return any(hasattr(p, "placements") for p in model.parameters())


def _full(value: torch.Tensor) -> torch.Tensor:
    # clip_grad_norm_ returns a DTensor for sharded grads; its full value is the global norm.
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def save_full_model(model, tokenizer, target) -> None:
    """Save a (maybe FSDP2-sharded) model's full weights; every rank must call it.

    The shards are gathered to rank 0 on the CPU (a collective); rank 0 writes ``target`` with
    ``save_pretrained``, the other ranks pass ``target=None``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state_dict = None
    if _is_sharded(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state_dict = get_model_state_dict(model, options=options)
    if target is not None:
        model.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(target)
