"""Short LoRA or full fine-tuning runs with a NormRecorder attached: the paper's measurement.

``run_probe`` trains the model it is given in place, or, given a zero-argument function that
builds the model (e.g. ``lambda: load_model(name)[0]``), builds a fresh one, trains it and lets
it go: so two probes in a row never hold more than one model plus what training needs (FT:
weights + grads + two Adam moments, ~4x the model; one more copy as the delta reference when
kind "delta" is recorded). Nothing is deep-copied.

The LoRA probe trains adapters only, as the paper's LoRA baseline did: peft LoRA on every
linear layer inside the blocks; embeddings, head and norms stay frozen.

In several processes (``distributed="fsdp2"`` or ``"ddp"``, under torchrun) every rank trains on
its slice of each global batch and records the whole model's norms; the FT probe, which holds
grads and Adam state for every weight, is the one that needs FSDP2's sharding. The LoRA probe
may be sharded too, when a replica of its frozen base would not fit a rank: the adapters are
drawn in full on every rank (the same seed, so the same values as one process) and sharded
with the blocks they adapt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from diagnostics.lora import wrap_lora
from diagnostics.recorder import NormRecorder
from diagnostics.runtime import autocast, check_precision, prepare_model, resolve_device
from lisa.defaults import DEFAULT_LEARNING_RATES, DEFAULT_LORA_RANK, default_lora_alpha
from lisa.layers import LayerMap
from lisa.validation import check_int, check_positive_float

__all__ = ["PROBE_METHODS", "run_probe"]

logger = logging.getLogger(__name__)

# "lora-eh": LoRA whose embedding and head also train in full (peft modules_to_save).
PROBE_METHODS = ("lora", "ft", "lora-eh")
_LORA_PROBES = ("lora", "lora-eh")
# The probes FSDP2 shards ("lora-eh"'s modules_to_save copies of E and H are not mapped).
_SHARDED = ("ft", "lora")
# Label id that the loss skips (prompt and padding tokens), as in lisa_apps.data.
_IGNORE_INDEX = -100

Features = Sequence[Mapping[str, Sequence[int]]]
Collate = Callable[[list], Mapping[str, torch.Tensor]]


def run_probe(
    model: nn.Module | Callable[[], nn.Module],
    features: Features,
    method: Literal["lora", "ft", "lora-eh"] = "lora",
    *,
    collate: Collate,
    steps: int = 30,
    lr: float | None = None,
    lora_rank: int = DEFAULT_LORA_RANK,
    lora_alpha: float | None = None,
    batch_size: int = 4,
    record_every: int = 1,
    kinds: Sequence[str] = ("weight",),
    reduce: str | Sequence[str] = "l2",
    seed: int = 0,
    weight_decay: float = 0.0,
    device: str | torch.device | None = None,
    precision: str = "float32",
    gradient_checkpointing: bool = False,
    progress: bool = True,
    run: str | None = None,
    path: str | os.PathLike | None = None,
    distributed: str | None = None,
    fill_shards: Callable[[nn.Module, torch.device], object] | None = None,
) -> pd.DataFrame:
    """Train briefly with LoRA or full fine-tuning and record per-layer norms each step.

    Step 0 is recorded before the first update, then steps 1..steps after each AdamW step
    (every ``record_every``). Batches are drawn from a seeded permutation of the features.

    Args:
        model: a causal LM (plain, not peft-wrapped), trained in place; or a zero-argument
            function that builds one, so the probe owns (and then drops) the only copy.
        features: tokenized examples ("input_ids", "attention_mask", "labels").
        method: "lora" (peft adapters on every block linear layer, adapters only train),
            "ft" (all parameters) or "lora-eh" (the adapters, and the embedding and head in
            full through peft ``modules_to_save``).
        collate: turns a list of features into a batch of tensors (e.g.
            ``lisa_apps.data.DataCollator(tokenizer)``).
        steps: optimizer steps.
        lr: AdamW learning rate; None takes ``lisa.defaults.DEFAULT_LEARNING_RATES[method]``
            (LoRA's for "lora-eh").
        lora_rank: LoRA rank r.
        lora_alpha: LoRA alpha; None takes ``lisa.defaults.default_lora_alpha(r)``.
        batch_size: sequences per step.
        record_every: record every n steps.
        kinds: norm kinds to record (see diagnostics.norms).
        reduce: reduction(s) to record.
        seed: seeds the batch order and the LoRA initialisation.
        weight_decay: AdamW weight decay.
        device: where to train (see diagnostics.runtime.resolve_device; None: CUDA if present).
        precision: "float32", "bf16-mixed" or "bf16" (see diagnostics.runtime).
        gradient_checkpointing: recompute activations in the backward pass.
        progress: show a tqdm progress bar.
        run: run id for the table (default f"{method}-probe").
        path: stream the recorder's CSV here (file or directory) and save it at the end; in
            several processes rank 0 alone writes it.
        distributed: None (this process alone), "ddp" (DistributedDataParallel: every rank
            holds the model) or "fsdp2" (FT and LoRA: every block with its adapters, E and H
            sharded with :func:`lisa.distributed.shard_model`), inside an initialised process
            group.
            ``batch_size`` is then the global batch, split evenly over the ranks; the loss is
            the global token mean and the norms are the whole model's, the same on every rank.
        fill_shards: under "fsdp2", for a model whose parameters are still on the meta device
            (``lisa_apps.sharded_load.empty_model``): called with the sharded model and the
            device, it fills each rank's shards (``lisa_apps.sharded_load.load_shards``, which
            keeps the LoRA adapters' drawn values).

    Returns:
        The tidy norms table (see NormRecorder); ``table.attrs["losses"]`` holds the loss per
        step and ``table.attrs["record_seconds"]`` the time spent recording.

    Example:
        >>> from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
        >>> from lisa_apps.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> features = tokenize_examples(make_math_problems(2), tokenizer, max_length=384)
        >>> table = run_probe(model, features, "ft", collate=DataCollator(tokenizer), steps=2,
        ...                   batch_size=1, progress=False)
        >>> sorted(table["step"].unique().tolist())
        [0, 1, 2]
        >>> len(table.attrs["losses"])
        2
    """
    if method not in PROBE_METHODS:
        raise ValueError(f"method={method!r} must be one of {PROBE_METHODS}")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    check_int("lora_rank", lora_rank)
    check_int("record_every", record_every)
    default_lr = DEFAULT_LEARNING_RATES["lora" if method in _LORA_PROBES else method]
    lr = check_positive_float("lr", default_lr if lr is None else lr)
    alpha = default_lora_alpha(lora_rank) if lora_alpha is None else lora_alpha
    check_positive_float("lora_alpha", alpha)
    if not features or "input_ids" not in features[0]:
        raise ValueError(
            "the probe needs tokenized features (dicts with input_ids, attention_mask, labels), "
            "e.g. from lisa_apps.data.tokenize_examples"
        )
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    rank, world = _check_distributed(distributed, method, batch_size)
    if rank != 0:
        path = None  # rank 0 alone writes

    trained = model if isinstance(model, nn.Module) else model()
    if not isinstance(trained, nn.Module):
        raise TypeError(f"the model function returned {type(trained).__name__}, not a module")
    empty = any(parameter.is_meta for parameter in trained.parameters())
    if empty and (distributed != "fsdp2" or fill_shards is None or method not in _SHARDED):
        raise ValueError(
            "the model's parameters are on the meta device: only the FT and LoRA probes under "
            "distributed='fsdp2' with fill_shards load them (after sharding)"
        )
    # FSDP2 moves each unit's shard to the device as it shards: keep the whole model on the CPU
    # (an empty model is only cast: its shards are filled once sharded).
    prepare_model(
        trained,
        device=None if empty else torch.device("cpu") if distributed == "fsdp2" else torch_device,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
    )
    layer_map = LayerMap.from_model(trained)
    if method in _LORA_PROBES:
        trained = wrap_lora(
            trained, rank=lora_rank, alpha=alpha, seed=seed, layer_map=layer_map,
            train_embeddings_and_head=method == "lora-eh",
        )  # fmt: skip
        layer_map = LayerMap.from_model(trained)
    else:
        for parameter in trained.parameters():
            parameter.requires_grad_(True)
    forward = trained
    if distributed == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        from lisa.distributed import shard_model

        shard_model(trained, layer_map, mesh=init_device_mesh(torch_device.type, (world,)))
        if empty:
            fill_shards(trained, torch_device)
        layer_map = LayerMap.from_model(trained)  # the parameters are now DTensors
    elif distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Every registered parameter is used in every step: no search for unused ones.
        forward = DistributedDataParallel(
            trained, device_ids=None if torch_device.type == "cpu" else [torch_device]
        )
    trained.train()
    parameters = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    recorder = NormRecorder(
        kinds=kinds,
        reduce=reduce,
        every=record_every,
        run=run or f"{method}-probe",
        method=method,
        path=path,
        layer_map=layer_map,
        reference=_lora_eh_reference(trained) if method == "lora-eh" and "delta" in kinds else None,
        settings={
            "method": method,
            "steps": steps,
            "lr": lr,
            "lora_rank": lora_rank if method in _LORA_PROBES else None,
            "lora_alpha": alpha if method in _LORA_PROBES else None,
            "batch_size": batch_size,
            "seed": seed,
            "weight_decay": weight_decay,
            "num_examples": len(features),
            "device": str(torch_device),
            "precision": precision,
            "gradient_checkpointing": gradient_checkpointing,
            "distributed": distributed,
            "world_size": world,
        },
    )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    recorder.record(0, trained)
    bar = tqdm(range(1, steps + 1), desc=f"{method} probe", disable=not progress, leave=False)
    for step in bar:
        while len(order) < batch_size:
            order.extend(rng.permutation(len(features)).tolist())
        batch_ids, order = order[:batch_size], order[batch_size:]
        if distributed is not None:
            batch_ids = batch_ids[rank * batch_size // world : (rank + 1) * batch_size // world]
        batch = collate([features[i] for i in batch_ids])
        batch = {key: value.to(torch_device) for key, value in batch.items()}
        if distributed is None:
            with autocast(torch_device, precision):
                loss = trained(**batch).loss
            loss.backward()
        else:
            loss = _global_token_mean_step(forward, batch, torch_device, precision, world)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        recorder.record(step, trained)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    if path is not None:
        recorder.save()
    table = recorder.table
    table.attrs["losses"] = losses
    table.attrs["record_seconds"] = recorder.record_seconds
    table.attrs["sidecar"] = recorder.sidecar()
    logger.info(
        "%s probe: %d steps, loss %.3f -> %.3f, %.2f s recording",
        method,
        steps,
        losses[0],
        losses[-1],
        recorder.record_seconds,
    )
    return table


def _check_distributed(distributed: str | None, method: str, batch_size: int) -> tuple[int, int]:
    """(rank, world size) for a probe in several processes; (0, 1) for one."""
    if distributed is None:
        return 0, 1
    if distributed not in ("ddp", "fsdp2"):
        raise ValueError(f"distributed={distributed!r} must be None, 'ddp' or 'fsdp2'")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(
            f"distributed={distributed!r} needs an initialised process group (start with "
            "torchrun and call torch.distributed.init_process_group)"
        )
    if distributed == "fsdp2" and method not in _SHARDED:
        raise ValueError(
            f"the {method} probe trains copies of E and H through peft's modules_to_save, "
            "which FSDP2 does not shard here; run it with distributed='ddp'"
        )
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if batch_size % world:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) is not a multiple of the {world} ranks"
        )
    return rank, world


def _global_token_mean_step(forward, batch, device, precision: str, world: int) -> torch.Tensor:
    """Backward of this rank's share of the global token-mean loss; returns the global loss.

    loss = sum over the global batch of -log p(label) / global number of label tokens. Each
    rank backpropagates its local sum / global count, times W because DDP and FSDP2 average
    gradients over the ranks.
    """
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    tokens = (labels != _IGNORE_INDEX).sum()
    torch.distributed.all_reduce(tokens)
    with autocast(device, precision):
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        local_sum = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=_IGNORE_INDEX,
            reduction="sum",
        )
    count = tokens.clamp(min=1)
    (local_sum * world / count).backward()
    total = local_sum.detach().float()
    torch.distributed.all_reduce(total)
    return total / count


def _lora_eh_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """Step-0 tensors for kind "delta" of a LoRA model whose E and H copies also train.

    The trained copies of E and H are cloned; every other parameter is frozen (or a LoRA
    adapter, measured through its module), so the live tensor itself is its step-0 value and
    costs no memory.
    """
    return {
        name: parameter.detach().clone() if parameter.requires_grad else parameter.detach()
        for name, parameter in model.named_parameters()
    }
