"""Per-layer norms of a model's parameters: current weights, trainable parameters, or the update.

Three kinds, each reduced to one number per layer-map group (embed, block.i, head, extras):

- ``weight``: ||theta^l||, all of the group's *effective* parameters as one vector. For a peft
  LoRA model the effective weight of an adapted module is the merged weight W + sum_a s_a B_a A_a
  (what the forward pass uses); the adapter matrices themselves are not counted again.
- ``trainable``: ||theta^l|| over the group's parameters with ``requires_grad`` (for LoRA: the
  adapter matrices A and B, plus whatever else trains). A group with no trainable parameter is
  left out of the result: there is nothing to measure, and 0.0 would read as "trains, but zero".
- ``delta``: the update so far. For parameters outside LoRA modules ||theta_t - theta_0|| against
  ``reference``; for a LoRA-adapted module ||sum_a s_a B_a A_a|| (peft's per-adapter scaling),
  computed from r x r Gram matrices so no module's delta is ever materialised. Every group is
  present; a group that did not move gives 0.0.

Reductions: ``l2`` (the paper's) or ``rms`` = l2 / sqrt(number of elements), comparable across
layers of different sizes. For ``delta`` the element count of an adapted module is that of its
weight matrix (the update's shape), not that of A and B.

Under FSDP2 (parameters are DTensors sharded on dim 0) each rank sums its shard and the sums
are added over the ranks; LoRA's small factors are gathered, the base weight never is.

Sums of squares are two-level: rows of 2048 elements reduced in the parameter's dtype (half
precision upcast to float32), then squared and accumulated in float64 (relative error ~1e-8,
at float32 speed: ~50 ms for SmolLM2-135M's 135M parameters on one core). The small LoRA Gram
products run in float64. lora_dropout does not enter: it acts on activations, not on weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Literal

import pandas as pd
import torch
from torch import nn

from lisa.layers import LayerMap

__all__ = ["NORM_KINDS", "REDUCTIONS", "layer_norms"]

NormKind = Literal["weight", "trainable", "delta"]
Reduction = Literal["l2", "rms"]
NORM_KINDS: tuple[str, ...] = ("weight", "trainable", "delta")
REDUCTIONS: tuple[str, ...] = ("l2", "rms")

# peft wraps the original model as base_model.model and moves an adapted module's weight under
# `.base_layer`; stripping both maps a peft parameter name to the plain model's name.
_PEFT_PREFIX = "base_model.model."
_BASE_LAYER = ".base_layer"
# peft's modules_to_save wrapper keeps the frozen original beside the trained copy it runs.
_MODULES_TO_SAVE_ORIGINAL = ".original_module."
# Row length of the two-level sum of squares in _squared_norm (accuracy vs speed, measured).
_ROW = 2048


def _squared_norm(tensor: torch.Tensor) -> float:
    """Sum of squares of one tensor, returned as a Python (float64) number.

    A float32 norm over tens of millions of elements drifts by ~1e-3 on CPU, and casting
    everything to float64 costs ~4x the time; rows of _ROW elements reduced in float32 (then
    squared and summed in float64) stay within ~1e-8 at float32 speed.
    """
    if hasattr(tensor, "to_local") and hasattr(tensor, "placements"):
        return _sharded_squared_norm(tensor)
    flat = tensor.detach().reshape(-1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    whole = flat.numel() // _ROW * _ROW
    total = 0.0
    if whole:
        rows = torch.linalg.vector_norm(
            flat[:whole].view(-1, _ROW), dim=1
        ).double()  # (whole/_ROW,)
        total += float(rows.square().sum())
    if whole < flat.numel():
        total += float(torch.linalg.vector_norm(flat[whole:], dtype=torch.float64)) ** 2
    return total


def _sharded_squared_norm(tensor: torch.Tensor) -> float:
    """Sum of squares of a DTensor (an FSDP2 shard): local sums added over the mesh's ranks."""
    mesh = tensor.device_mesh
    if mesh.ndim != 1 or not all(placement.is_shard() for placement in tensor.placements):
        return _squared_norm(tensor.full_tensor())
    local = tensor.to_local()
    total = torch.tensor(_squared_norm(local), dtype=torch.float64, device=local.device)
    torch.distributed.all_reduce(total, group=mesh.get_group())
    return float(total)


def _is_lora_layer(module: nn.Module) -> bool:
    # Duck-typed so that plain models never import peft.
    return (
        hasattr(module, "lora_A") and hasattr(module, "scaling") and hasattr(module, "base_layer")
    )


def _lora_layers(model: nn.Module) -> dict[int, nn.Module]:
    """Map id(base weight parameter) -> the LoRA layer that wraps it."""
    layers = {}
    for module in model.modules():
        if _is_lora_layer(module):
            weight = getattr(module.get_base_layer(), "weight", None)
            if weight is not None:
                layers[id(weight)] = module
    return layers


def _adapter_parameter_ids(lora_layers: Mapping[int, nn.Module]) -> set[int]:
    ids = set()
    for module in lora_layers.values():
        for attribute in module.adapter_layer_names:
            container = getattr(module, attribute, None)
            if isinstance(container, nn.ModuleDict | nn.ParameterDict):
                ids.update(id(p) for p in container.parameters())
    return ids


def _counted_adapters(module: nn.Module) -> list[str]:
    """The adapters that act in the forward pass (active, present here, adapters enabled)."""
    if getattr(module, "disable_adapters", False):
        return []
    present = set(module.lora_A.keys()) | set(getattr(module, "lora_embedding_A", {}).keys())
    return [name for name in module.active_adapters if name in present]


def _factors(module: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A, B) with delta = scaling * B @ A in the (out, in) orientation, or None if not 2-D.

    Linear: A (r, in), B (out, r). Embedding: A (r, num_embeddings), B (dim, r). Other LoRA
    layer types (convolutions...) return None and go through peft's get_delta_weight.
    """
    if getattr(module, "use_dora", {}).get(adapter, False):
        raise ValueError(
            f"adapter {adapter!r} uses DoRA, whose effective weight is not W + s*B@A; "
            "layer_norms supports plain LoRA adapters only"
        )
    if adapter in module.lora_A and isinstance(module.lora_A[adapter], nn.Linear):
        return module.lora_A[adapter].weight, module.lora_B[adapter].weight
    embedding_A = getattr(module, "lora_embedding_A", {})
    if adapter in embedding_A:
        return embedding_A[adapter], module.lora_embedding_B[adapter]
    return None


def _stored_transposed(module: nn.Module) -> bool:
    """Whether the base weight is stored as (in, out), the transpose of B @ A's orientation."""
    from peft.tuners.lora import layer as lora_layer

    # An embedding stores (num_embeddings, dim); GPT-2's Conv1D (in, out).
    return isinstance(module, lora_layer.Embedding) or getattr(module, "fan_in_fan_out", False)


def _oriented_base(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The base weight in the (out, in) orientation of B @ A."""
    return weight.T if _stored_transposed(module) else weight


def _adapter_delta_squared(module: nn.Module, adapters: list[str], factors=None) -> float:
    """||sum_a s_a B_a A_a||_F^2 without forming any B @ A.

    <B_a A_a, B_b A_b>_F = tr(A_a^T B_a^T B_b A_b) = sum((B_a^T B_b) * (A_a A_b^T)), r x r only.
    ``factors``: the adapters' (A, B), if already at hand (gathered from FSDP2 shards).
    """
    factors = factors or [_factors(module, a) for a in adapters]
    if any(f is None for f in factors):
        delta = sum(module.get_delta_weight(a) for a in adapters)
        return _squared_norm(delta)
    doubles = [(_whole(A).double(), _whole(B).double()) for A, B in factors]
    scales = [float(module.scaling[a]) for a in adapters]
    total = 0.0
    for i, (A_i, B_i) in enumerate(doubles):
        for j, (A_j, B_j) in enumerate(doubles):
            total += scales[i] * scales[j] * float(((B_i.T @ B_j) * (A_i @ A_j.T)).sum())
    return max(total, 0.0)


def _effective_weight_squared(module: nn.Module, weight: torch.Tensor) -> float:
    """||W + sum_a s_a B_a A_a||^2 over the adapters not already merged into W.

    = ||W||^2 + 2 sum_a s_a <W, B_a A_a> + ||sum_a s_a B_a A_a||^2, with
    <W, B A> = sum((B^T W) * A): an (r, in) product instead of an (out, in) one.
    """
    merged = set(getattr(module, "merged_adapters", []))
    adapters = [a for a in _counted_adapters(module) if a not in merged]
    total = _squared_norm(weight)
    if not adapters:
        return total
    factors = [_factors(module, a) for a in adapters]
    if any(f is None for f in factors):
        effective = weight + sum(module.get_delta_weight(a) for a in adapters)
        return _squared_norm(effective)
    if _is_row_sharded(weight):
        factors = [(_whole(A), _whole(B)) for A, B in factors]  # r x (in + out): gather once
        cross = _sharded_cross(module, weight, adapters, factors)
    else:
        oriented = _oriented_base(module, weight)
        cross = 0.0
        for adapter, (A, B) in zip(adapters, factors, strict=True):
            product = (B.T.to(oriented.dtype) @ oriented).double()  # (r, in)
            cross += float(module.scaling[adapter]) * float((product * A.double()).sum())
    return max(total + 2.0 * cross + _adapter_delta_squared(module, adapters, factors), 0.0)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in full: an FSDP2 shard (a DTensor) gathered, a plain tensor detached."""
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _is_row_sharded(tensor: torch.Tensor) -> bool:
    """A DTensor sharded on dim 0 over a 1-D mesh (FSDP2's layout)."""
    placements = getattr(tensor, "placements", None)
    return (
        placements is not None
        and tensor.device_mesh.ndim == 1
        and len(placements) == 1
        and placements[0].is_shard(0)
    )


def _sharded_cross(module: nn.Module, weight: torch.Tensor, adapters, factors) -> float:
    """sum_a s_a <W, B_a A_a> for a row-sharded W, without gathering it.

    Each rank takes its rows [start, stop) of the stored weight (torch.chunk's split, as
    FSDP2's) against the gathered factors (r x (in + out), small): for the (out, in) layout
    <W[rows], B[rows] A>, for a transposed one (embedding, Conv1D) <W[rows]^T, B A[:, rows]>;
    the ranks' sums are added in float64. ``factors`` are gathered already.
    """
    local = weight.to_local()
    chunk = -(-weight.shape[0] // weight.device_mesh.size())  # ceil
    start = min(weight.device_mesh.get_local_rank() * chunk, weight.shape[0])
    rows = slice(start, start + local.shape[0])
    transposed = _stored_transposed(module)
    cross = 0.0
    for adapter, (A, B) in zip(adapters, factors, strict=True):
        A = A.double()
        if transposed:
            product = (B.T.to(local.dtype) @ local.T).double() * A[:, rows]  # (r, rows)
        else:
            product = (B[rows].T.to(local.dtype) @ local).double() * A  # (r, in)
        cross += float(module.scaling[adapter]) * float(product.sum())
    total = torch.tensor(cross, dtype=torch.float64, device=local.device)
    torch.distributed.all_reduce(total, group=weight.device_mesh.get_group())
    return float(total)


def _normalised_name(name: str) -> str:
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    return name.replace(_BASE_LAYER, "")


def _reference_lookup(reference: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(reference, nn.Module):
        tensors = dict(reference.state_dict(keep_vars=True))
        tensors.update(dict(reference.named_parameters()))
    elif isinstance(reference, Mapping):
        tensors = dict(reference)
    else:
        raise TypeError(
            f"reference must be a model or a state_dict, got {type(reference).__name__}"
        )
    # Also index by the plain-model name so a peft model can be compared with its base model.
    lookup = {_normalised_name(name): tensor for name, tensor in tensors.items()}
    lookup.update(tensors)
    return lookup


def _reference_tensor(lookup: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    tensor = lookup.get(name)
    if tensor is None:
        tensor = lookup.get(_normalised_name(name))
    if tensor is None:
        raise ValueError(
            f"reference has no tensor for parameter {name!r}; pass the model (or its "
            "state_dict) as it was at step 0"
        )
    return tensor


def _difference_squared(current: torch.Tensor, initial: torch.Tensor) -> float:
    if current.shape != initial.shape:
        raise ValueError(
            f"reference tensor has shape {tuple(initial.shape)} but the parameter has "
            f"{tuple(current.shape)}; the reference must be the same model at step 0"
        )
    return _squared_norm(current - initial.to(current.device, current.dtype))


def _group_terms(
    kind: str,
    parameters: list[tuple[str, nn.Parameter]],
    lora_layers: dict[int, nn.Module],
    adapter_ids: set[int],
    reference: dict[str, torch.Tensor] | None,
) -> Iterator[tuple[float, int]]:
    """Yield (sum of squares, element count) for each tensor the kind counts in one group."""
    for name, parameter in parameters:
        if kind == "trainable":
            if parameter.requires_grad:
                yield _squared_norm(parameter), parameter.numel()
            continue
        if id(parameter) in adapter_ids:
            continue  # counted through the module they adapt
        if _MODULES_TO_SAVE_ORIGINAL in name:
            continue  # peft modules_to_save: the forward pass uses the trained copy, not this
        module = lora_layers.get(id(parameter))
        if kind == "weight":
            if module is None:
                yield _squared_norm(parameter), parameter.numel()
            else:
                yield _effective_weight_squared(module, parameter), parameter.numel()
            continue
        # kind == "delta"
        if module is not None:
            if getattr(module, "merged_adapters", []):
                raise ValueError(
                    f"module of {name!r} has merged adapters; unmerge them before measuring delta"
                )
            adapters = _counted_adapters(module)
            if reference is not None:
                base_change = parameter - _reference_tensor(reference, name).to(parameter)
                if bool(base_change.any()):
                    # The base moved too: form this one module's full update.
                    update = base_change + sum(
                        (module.get_delta_weight(a) for a in adapters), torch.zeros(())
                    )
                    yield _squared_norm(update), parameter.numel()
                    continue
            yield _adapter_delta_squared(module, adapters), parameter.numel()
        elif reference is not None:
            yield (
                _difference_squared(parameter, _reference_tensor(reference, name)),
                parameter.numel(),
            )
        elif parameter.requires_grad:
            raise ValueError(
                f"kind='delta' needs reference= (the model or state_dict at step 0) to measure "
                f"the trainable parameter {name!r}"
            )
        else:
            # A frozen base parameter of a LoRA model: unchanged by construction.
            yield 0.0, parameter.numel()


@torch.no_grad()
def layer_norms(
    model: nn.Module,
    layer_map: LayerMap | None = None,
    kind: NormKind = "weight",
    reduce: Reduction = "l2",
    reference: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> pd.Series:
    """Norm of each layer-map group's parameters, one value per group.

    l2: ||theta^l||_2 over all counted elements of group l as one vector;
    rms: ||theta^l||_2 / sqrt(n^l) with n^l the number of those elements.

    Args:
        model: a causal LM, plain or peft-wrapped.
        layer_map: the model's LayerMap; built with ``LayerMap.from_model`` when None.
        kind: "weight" (effective current weights), "trainable" (requires_grad parameters only;
            groups without any are left out) or "delta" (update since step 0).
        reduce: "l2" or "rms".
        reference: the model or its state_dict at step 0; required by kind "delta" for
            parameters outside LoRA modules that may have changed.

    Returns:
        pandas Series of float64 indexed by group name (in layer-map order), named ``kind``.

    Example:
        >>> from lisa_apps.models import load_model
        >>> model, _ = load_model("tiny-llama")
        >>> norms = layer_norms(model, kind="weight")
        >>> norms.index.tolist()
        ['embed', 'block.0', 'block.1', 'block.2', 'block.3', 'head', 'extras']
        >>> float(norms["block.0"]) > 0
        True
    """
    if kind not in NORM_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {NORM_KINDS}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is not one of {REDUCTIONS}")
    if layer_map is None:
        layer_map = LayerMap.from_model(model)
    lora_layers = _lora_layers(model)
    adapter_ids = _adapter_parameter_ids(lora_layers)
    if kind == "delta" and reference is None and not lora_layers:
        raise ValueError(
            "kind='delta' on a model without LoRA adapters needs reference= "
            "(the model or its state_dict at step 0)"
        )
    lookup = _reference_lookup(reference) if (kind == "delta" and reference is not None) else None
    values: dict[str, float] = {}
    for group in layer_map.group_names:
        squares = 0.0
        count = 0
        for square, numel in _group_terms(
            kind, layer_map.parameters(group), lora_layers, adapter_ids, lookup
        ):
            squares += square
            count += numel
        if count == 0:
            continue  # kind "trainable" on a group that does not train
        norm = math.sqrt(squares)
        values[group] = norm / math.sqrt(count) if reduce == "rms" else norm
    return pd.Series(values, dtype="float64", name=kind)
