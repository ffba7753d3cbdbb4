"""Short LoRA or full fine-tuning runs with a NormRecorder attached: the paper's measurement.

``run_probe`` trains a *copy* of the model by default (``copy_model=True``), so the caller's
model is unchanged: the FT probe's AdamW would otherwise move its weights, and the LoRA probe's
peft wrapping would inject adapter modules into it. The copy costs one extra model in memory
(SmolLM2-135M: ~0.54 GB in float32) on top of what training needs (FT: weights + grads + two
Adam moments, ~4x the model; plus one more copy as the delta reference when kind "delta" is
recorded). Pass ``copy_model=False`` to train the given model in place and save that copy.

The LoRA probe trains adapters only, as the paper's LoRA baseline did: peft LoRA on every
linear layer inside the blocks; embeddings, head and norms stay frozen.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from diagnostics.recorder import NormRecorder
from lisa.layers import LayerMap

__all__ = ["DEFAULT_LEARNING_RATES", "lora_target_modules", "run_probe"]

logger = logging.getLogger(__name__)

# LoRA moves few parameters from a zero update and wants a larger step than full fine-tuning.
DEFAULT_LEARNING_RATES: dict[str, float] = {"lora": 2e-4, "ft": 2e-5}


def lora_target_modules(model: nn.Module, layer_map: LayerMap | None = None) -> list[str]:
    """Full names of every linear layer inside the model's blocks (peft ``target_modules``).

    Args:
        model: the plain (not yet peft-wrapped) model.
        layer_map: its LayerMap; built when None.

    Returns:
        Module names such as ``model.layers.0.self_attn.q_proj``, in model order.
    """
    from transformers.pytorch_utils import Conv1D

    layer_map = layer_map or LayerMap.from_model(model)
    prefix = f"{layer_map.blocks_path}."
    names = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, nn.Linear | Conv1D)
    ]
    if not names:
        raise ValueError(
            f"no linear layers found under {layer_map.blocks_path!r}; the LoRA probe needs them"
        )
    return names


def _features(examples: Sequence[Mapping[str, Any]], tokenizer, max_length: int) -> list[dict]:
    if not examples:
        raise ValueError("the probe needs at least one example")
    if "input_ids" in examples[0]:
        return [
            {key: list(value)[:max_length] for key, value in example.items()}
            for example in examples
        ]
    if tokenizer is None:
        raise ValueError(
            "examples are not tokenized (no 'input_ids'); pass tokenizer= to tokenize them"
        )
    from lisa.data import tokenize_examples

    return tokenize_examples(examples, tokenizer, max_length=max_length)


def _collator(tokenizer, model: nn.Module):
    from lisa.data import DataCollator

    if tokenizer is not None:
        return DataCollator(tokenizer)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return DataCollator(pad_token_id=0 if pad is None else int(pad))


def wrap_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    seed: int = 0,
    layer_map: LayerMap | None = None,
):
    """Wrap a causal LM with LoRA adapters on every linear layer of its blocks (peft).

    The update of each adapted weight is (alpha / rank) * B @ A; B starts at zero, so the
    wrapped model first computes exactly what the base model does. Used by the LoRA probe and
    by the LoRA runs of :func:`diagnostics.training.finetune`, so both adapt the same layers.

    Args:
        model: the causal LM (wrapped in place, as peft does).
        rank: adapter rank r.
        alpha: LoRA alpha.
        dropout: dropout on the adapters' input.
        seed: seeds A's initialisation on a forked RNG (the caller's RNG is untouched).
        layer_map: the model's LayerMap, if already built.

    Returns:
        The peft model; only adapter weights require grad.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_target_modules(model, layer_map)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed; peft must be told.
        fan_in_fan_out=any(isinstance(model.get_submodule(n), Conv1D) for n in targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft draws A from torch's global generator; seed it without leaking into the caller's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def run_probe(
    model: nn.Module,
    examples: Sequence[Mapping[str, Any]],
    method: Literal["lora", "ft"] = "lora",
    steps: int = 30,
    lr: float | None = None,
    lora_rank: int = 8,
    batch_size: int = 4,
    max_length: int = 128,
    record_every: int = 1,
    kinds: Sequence[str] = ("weight",),
    reduce: str | Sequence[str] = "l2",
    seed: int = 0,
    tokenizer=None,
    progress: bool = True,
    *,
    lora_alpha: float | None = None,
    weight_decay: float = 0.0,
    run: str | None = None,
    path: str | os.PathLike | None = None,
    copy_model: bool = True,
) -> pd.DataFrame:
    """Train briefly with LoRA or full fine-tuning and record per-layer norms each step.

    Step 0 is recorded before the first update, then steps 1..steps after each AdamW step
    (every ``record_every``). Batches are drawn from a seeded permutation of the examples.

    Args:
        model: a causal LM (plain, not peft-wrapped).
        examples: dicts with "instruction"/"output" (tokenized with ``tokenizer``) or already
            tokenized features ("input_ids", "attention_mask", "labels").
        method: "lora" (peft adapters on every block linear layer, adapters only train) or
            "ft" (all parameters).
        steps: optimizer steps.
        lr: AdamW learning rate; None takes DEFAULT_LEARNING_RATES[method].
        lora_rank: LoRA rank r (alpha defaults to r, i.e. scaling 1).
        batch_size: sequences per step.
        max_length: tokens per sequence (truncation).
        record_every: record every n steps.
        kinds: norm kinds to record (see diagnostics.norms).
        reduce: reduction(s) to record.
        seed: seeds the batch order and the LoRA initialisation.
        tokenizer: needed when ``examples`` are not tokenized.
        progress: show a tqdm progress bar.
        lora_alpha: LoRA alpha (scaling = alpha / r).
        weight_decay: AdamW weight decay.
        run: run id for the table (default f"{method}-probe").
        path: stream the recorder's CSV here (file or directory) and save it at the end.
        copy_model: train a deep copy (default) instead of the given model.

    Returns:
        The tidy norms table (see NormRecorder); ``table.attrs["losses"]`` holds the loss per
        step and ``table.attrs["record_seconds"]`` the time spent recording.

    Example:
        >>> from lisa.data import make_math_problems
        >>> from lisa.models import load_model
        >>> model, tok = load_model("tiny-llama")
        >>> examples = make_math_problems(2)
        >>> table = run_probe(model, examples, "ft", steps=2, batch_size=1, max_length=384,
        ...                   tokenizer=tok, progress=False)
        >>> sorted(table["step"].unique().tolist())
        [0, 1, 2]
        >>> len(table.attrs["losses"])
        2
    """
    if method not in ("lora", "ft"):
        raise ValueError(f"method={method!r} must be 'lora' or 'ft'")
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("max_length", max_length),
        ("lora_rank", lora_rank),
        ("record_every", record_every),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    lr = DEFAULT_LEARNING_RATES[method] if lr is None else float(lr)
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be positive")

    features = _features(examples, tokenizer, max_length)
    collate = _collator(tokenizer, model)
    trained = copy.deepcopy(model) if copy_model else model
    layer_map = LayerMap.from_model(trained)
    if method == "lora":
        alpha = lora_rank if lora_alpha is None else lora_alpha
        trained = wrap_lora(trained, rank=lora_rank, alpha=alpha, seed=seed, layer_map=layer_map)
        layer_map = LayerMap.from_model(trained)
    else:
        for parameter in trained.parameters():
            parameter.requires_grad_(True)
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
        settings={
            "method": method,
            "steps": steps,
            "lr": lr,
            "lora_rank": lora_rank if method == "lora" else None,
            "lora_alpha": (lora_alpha or lora_rank) if method == "lora" else None,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
            "weight_decay": weight_decay,
            "num_examples": len(features),
        },
    )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    device = next(trained.parameters()).device
    recorder.record(0, trained)
    bar = tqdm(range(1, steps + 1), desc=f"{method} probe", disable=not progress, leave=False)
    for step in bar:
        while len(order) < batch_size:
            order.extend(rng.permutation(len(features)).tolist())
        batch_ids, order = order[:batch_size], order[batch_size:]
        batch = collate([features[i] for i in batch_ids])
        batch = {key: value.to(device) for key, value in batch.items()}
        loss = trained(**batch).loss
        loss.backward()
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
