"""Estimate rows for a model: meta models per weight dtype, exact bytes, activations, suggestions.

Each weight dtype needs one meta model (and one more per LoRA rank, which peft wraps in place);
building them takes about a second even for a 70B configuration and allocates no weight.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap
from lisa.validation import check_int
from lisa_apps.estimate.accounting import Setup, account, trained_parameters, weight_dtype
from lisa_apps.estimate.activations import activation_estimate, model_dims
from lisa_apps.estimate.loading import load_bytes

__all__ = ["Suggestion", "Workload", "estimate", "suggestions"]


@dataclass(frozen=True)
class Workload:
    """What one optimizer step processes on one device (for the activation estimate).

    Example:
        >>> Workload(batch_size=4, seq_len=256).tokens
        1024
    """

    batch_size: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, hint="sequences per device")
        check_int("seq_len", self.seq_len, hint="tokens per sequence")

    @property
    def tokens(self) -> int:
        """Tokens per step on one device."""
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class Suggestion:
    """LISA above LoRA at one precision, and what each cheaper LISA setting saves.

    Attributes:
        lisa: the LISA row. lora: the LoRA row it exceeds.
        options: (what to change, the changed setup's row) for each cheaper setting.
    """

    lisa: dict
    lora: dict
    options: tuple[tuple[str, dict], ...]


def estimate(
    config,
    setups: Sequence[Setup],
    workload: Workload = Workload(),
    *,
    model_name: str | None = None,
    blocks_path: str | None = None,
) -> list[dict[str, Any]]:
    """One row per setup: exact bytes of weights, grads, optimizer state, plus activations.

    Args:
        config: a transformers config (see lisa_apps.estimate.configs.resolve_config).
        setups: the setups, in the order the rows should have.
        workload: batch, sequence length and checkpointing for the activation estimate.
        model_name: the name recorded in each row (default: the config's model type).
        blocks_path: dotted path of the blocks list, for models LayerMap cannot map.

    Returns:
        Rows (dicts) with the keys method, gamma, lora_rank, precision, fsdp_ranks,
        trainable_parameters, parameter_bytes, grad_bytes, optimizer_state_bytes,
        master_weight_bytes, total_bytes, activation_bytes_estimate,
        total_with_activations_bytes, embed_head_extras_share, load_full_copy_bytes and
        load_sharded_bytes (peak CPU memory of one rank while loading; None where the run
        loads a full copy anyway) and the workload.

    Example:
        >>> from lisa_apps.tiny import tiny_config
        >>> rows = estimate(tiny_config("tiny-llama"), [Setup("ft", "bf16")])
        >>> rows[0]["grad_bytes"] == rows[0]["parameter_bytes"]
        True
    """
    return _rows(config, setups, workload, model_name, blocks_path, {})


# (weight dtype, LoRA rank) -> (meta model, its LayerMap), shared by a call and its suggestions.
_Models = dict[tuple[torch.dtype, int | None], tuple[Any, LayerMap]]


def _rows(
    config,
    setups: Sequence[Setup],
    workload: Workload,
    model_name: str | None,
    blocks_path: str | None,
    models: _Models,
) -> list[dict[str, Any]]:
    name = model_name or getattr(config, "model_type", type(config).__name__)
    dims = model_dims(config)
    rows = []
    for setup in setups:
        key = (weight_dtype(setup.precision), setup.lora_rank)
        if key not in models:
            models[key] = _meta_model(config, key[0], setup.lora_rank, blocks_path)
        model, layer_map = models[key]
        memory = account(model, layer_map, setup)
        load_full, load_sharded = load_bytes(model, setup)
        activations = activation_estimate(
            dims,
            batch_size=workload.batch_size,
            seq_len=workload.seq_len,
            precision=setup.precision,
            block_modes=_block_modes(setup, layer_map.num_blocks),
            head_trains=_trains(model, layer_map, setup, HEAD),
            final_norm_trains=_trains(model, layer_map, setup, EXTRAS),
            gradient_checkpointing=workload.gradient_checkpointing,
            lora_rank=setup.lora_rank or 0,
        )
        share = (
            memory.always_trained_parameters / memory.trainable_parameters
            if setup.method == "lisa" and memory.trainable_parameters
            else None
        )
        rows.append(
            {
                "model": name,
                "method": setup.method,
                "label": setup.label,
                "gamma": setup.gamma,
                "lora_rank": setup.lora_rank,
                "precision": setup.precision,
                "fsdp_ranks": setup.fsdp_ranks,
                "train_embeddings": setup.train_embeddings if setup.method == "lisa" else None,
                "train_head": setup.train_head if setup.method == "lisa" else None,
                "train_extras": setup.train_extras if setup.method == "lisa" else None,
                # The model's own parameters: peft's adapters (LoRA's trained set) not counted.
                "num_parameters": sum(p.numel() for p in layer_map.model.parameters())
                - (memory.trainable_parameters if setup.method == "lora" else 0),
                "num_blocks": layer_map.num_blocks,
                "tied": layer_map.tied,
                "blocks_trained": memory.blocks_trained,
                "trainable_parameters": memory.trainable_parameters,
                "parameter_bytes": memory.parameter_bytes,
                "grad_bytes": memory.grad_bytes,
                "optimizer_state_bytes": memory.optimizer_state_bytes,
                "master_weight_bytes": memory.master_weight_bytes,
                "total_bytes": memory.total_bytes,
                "activation_bytes_estimate": activations.total_bytes,
                "total_with_activations_bytes": memory.total_bytes + activations.total_bytes,
                "embed_head_extras_share": share,
                # CPU memory of one rank while loading (lisa_apps.estimate.loading).
                "load_full_copy_bytes": load_full,
                "load_sharded_bytes": load_sharded,
                # FSDP2 gathers one unit (a block, E or H) in full to compute with it: under
                # CPU offload that, with the activations, is what stays on the device.
                "largest_unit_bytes": _largest_unit_bytes(layer_map),
                # Checkpointing (lisa_apps.training.dcp and loop.save_full_model): what one
                # rank writes into checkpoint-N, the exported model/, and what a rank gathers
                # to export it.
                **_checkpoint_bytes(model, layer_map, setup, memory),
                "batch_size": workload.batch_size,
                "seq_len": workload.seq_len,
                "gradient_checkpointing": workload.gradient_checkpointing,
            }
        )
    return rows


def _largest_unit_bytes(layer_map: LayerMap) -> int:
    """Bytes of the largest FSDP2 unit gathered in full: a block, E or H (weights' dtype)."""
    groups = [layer_map.block_parameters(i) for i in range(layer_map.num_blocks)]
    groups += [layer_map.parameters(g) for g in (EMBED, HEAD) if g in layer_map.group_names]
    return max(
        (sum(p.numel() * p.element_size() for _, p in group) for group in groups), default=0
    )


def _checkpoint_bytes(model, layer_map: LayerMap, setup: Setup, memory) -> dict[str, int]:
    """A rank's part of a checkpoint, the exported model's bytes, and what export gathers.

    checkpoint_bytes: a checkpoint-N holds the weights and the AdamW state (grads are not
    saved), so one rank writes its own weights and state: its shards under FSDP2 (no rank
    gathers), the whole checkpoint in one process. export_bytes: model/ holds the whole model
    in the weights' dtype (LoRA: the adapters only). export_gathered_bytes: what a rank holds
    besides its training state while exporting under FSDP2: one unit gathered in full at a
    time (FT, LISA), or, for LoRA, the whole model's state gathered into rank 0's CPU memory
    (peft's save_pretrained takes a full state dict); 0 in one process.
    """
    unique = list({id(p): p for p in model.parameters()}.values())  # a tied one once
    exported = [p for p in unique if p.requires_grad] if setup.method == "lora" else unique
    whole = sum(p.numel() * p.element_size() for p in unique)
    if setup.fsdp_ranks < 2:
        gathered = 0
    elif setup.method == "lora":
        gathered = whole
    else:
        gathered = _largest_unit_bytes(layer_map)
    return {
        "checkpoint_bytes": memory.parameter_bytes + memory.optimizer_state_bytes,
        "export_bytes": sum(p.numel() * p.element_size() for p in exported),
        "export_gathered_bytes": gathered,
    }


def suggestions(
    config,
    rows: Sequence[dict],
    workload: Workload = Workload(),
    *,
    blocks_path: str | None = None,
) -> list[Suggestion]:
    """For each LISA row with E and H on that needs more than the LoRA row of its precision,
    the rows of the cheaper LISA settings: without E, without H and without both (untied
    models), and with gamma - 1.

    Rows are compared by total_with_activations_bytes.

    Example:
        >>> from lisa_apps.tiny import tiny_config
        >>> config = tiny_config("tiny-llama")
        >>> rows = estimate(config, [Setup("lora", "float32"), Setup("lisa", "float32")])
        >>> [what for what, _ in suggestions(config, rows)[0].options]
        ['freeze E', 'freeze H', 'freeze E+H', 'gamma 1']
    """
    found = []
    models: _Models = {}
    for lisa in rows:
        if lisa["method"] != "lisa" or not (lisa["train_embeddings"] and lisa["train_head"]):
            continue
        lora = next(
            (
                row
                for row in rows
                if row["method"] == "lora"
                and row["precision"] == lisa["precision"]
                and row["fsdp_ranks"] == lisa["fsdp_ranks"]
            ),
            None,
        )
        if (
            lora is None
            or lisa["total_with_activations_bytes"] <= lora["total_with_activations_bytes"]
        ):
            continue
        setup = _setup_of(lisa)
        changes = [("freeze E", replace(setup, train_embeddings=False))]
        if not lisa["tied"]:  # a tied matrix is E: freezing "H" alone changes nothing
            changes.append(("freeze H", replace(setup, train_head=False)))
            changes.append(("freeze E+H", replace(setup, train_embeddings=False, train_head=False)))
        if setup.gamma > 1:
            changes.append((f"gamma {setup.gamma - 1}", replace(setup, gamma=setup.gamma - 1)))
        changed = _rows(
            config, [change for _, change in changes], workload, lisa["model"], blocks_path, models
        )
        found.append(
            Suggestion(
                lisa=lisa,
                lora=lora,
                options=tuple((what, row) for (what, _), row in zip(changes, changed, strict=True)),
            )
        )
    return found


def _setup_of(row: dict) -> Setup:
    return Setup(
        row["method"],
        row["precision"],
        gamma=row["gamma"],
        lora_rank=row["lora_rank"],
        train_embeddings=bool(row["train_embeddings"]),
        train_head=bool(row["train_head"]),
        train_extras=bool(row["train_extras"]),
        fsdp_ranks=row["fsdp_ranks"],
    )


def _meta_model(config, dtype: torch.dtype, lora_rank: int | None, blocks_path: str | None):
    from lisa_apps.models import meta_model

    model = meta_model(config).to(dtype)
    try:
        layer_map = LayerMap.from_model(model, blocks_path)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(
            f"the model's blocks cannot be mapped ({error}); pass their dotted path as "
            "blocks_path (--blocks-path on the command line)"
        ) from None
    if lora_rank is None:
        return model, layer_map
    from diagnostics.lora import wrap_lora

    # Adapters created under the meta device take no memory, whatever the model's size.
    with torch.device("meta"), warnings.catch_warnings():
        # peft calls a transformers method that warns of its own rename; nothing to act on.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        wrapped = wrap_lora(model, rank=lora_rank, layer_map=layer_map)
    return wrapped, LayerMap.from_model(wrapped, layer_map.blocks_path)


def _block_modes(setup: Setup, num_blocks: int) -> list[str]:
    """Each block's part in the backward pass; LISA and BAdam take the costliest placement
    (trained blocks at the bottom, so every block above passes gradients down)."""
    if setup.method == "ft":
        return ["full"] * num_blocks
    if setup.method == "lora":
        return ["adapter"] * num_blocks
    trained = setup.gamma if setup.method == "lisa" else 1
    return ["full"] * trained + ["frozen"] * (num_blocks - trained)


def _trains(model, layer_map: LayerMap, setup: Setup, group: str) -> bool:
    """Whether a parameter of ``group`` trains (the head of a tied model is its embedding)."""
    trained, _ = trained_parameters(model, layer_map, setup)
    ids = {id(p) for p in trained}
    groups = [group, EMBED] if group == HEAD and layer_map.tied else [group]
    return any(
        id(p) in ids
        for g in groups
        if g in layer_map.group_names
        for _, p in layer_map.parameters(g)
    )
