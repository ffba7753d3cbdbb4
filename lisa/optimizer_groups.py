"""The parameters the engine switches: a model's layer groups, kept to those in its optimizer.

Both functions refuse what the engine could not train correctly: blocks it cannot map, a
``layer_map`` of another model, and trainable parameters or whole groups missing from the
optimizer (docs/design.md section 3, rule 1).
"""

from __future__ import annotations

import torch
from torch import nn

from lisa.config import LisaConfig
from lisa.layers import LayerMap, block_index

__all__ = ["managed_groups", "resolve_layer_map"]


def resolve_layer_map(
    model: nn.Module, config: LisaConfig, layer_map: LayerMap | None
) -> LayerMap:
    """``layer_map``, checked against ``model`` and ``config``, or the model's own map.

    Raises:
        ValueError: the blocks cannot be mapped (saying how to pass ``blocks_path``), or
            ``layer_map`` belongs to another model or disagrees with ``config.blocks_path``.
    """
    if layer_map is None:
        try:
            return LayerMap.from_model(model, config.blocks_path)
        except (AttributeError, KeyError, ValueError, TypeError) as error:
            raise ValueError(
                f"LISA could not map the blocks of {type(model).__name__} "
                f"(LisaConfig.blocks_path={config.blocks_path!r}): {error}. Set "
                "LisaConfig(blocks_path=...) to the dotted path of the ModuleList of "
                "transformer blocks (e.g. 'model.layers')"
            ) from error
    if layer_map.model is not model:
        raise ValueError("layer_map was built for another model; build it from this model")
    if config.blocks_path is not None and layer_map.blocks_path != config.blocks_path:
        raise ValueError(
            f"blocks_path={config.blocks_path!r} disagrees with the given layer_map "
            f"({layer_map.blocks_path!r}); pass one of them"
        )
    return layer_map


def managed_groups(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    layer_map: LayerMap,
    config: LisaConfig,
) -> dict[str, list[nn.Parameter]]:
    """Group name -> parameters the engine toggles (those in the optimizer)."""
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    not_optimized = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and id(p) not in in_optimizer
    ]
    if not_optimized:
        raise ValueError(
            f"{len(not_optimized)} trainable parameters are not in the optimizer "
            f"(e.g. {not_optimized[:3]}); build the optimizer over every parameter LISA may "
            "train, or set requires_grad=False on those you never want trained"
        )
    groups = {
        group: [p for _, p in layer_map.parameters(group) if id(p) in in_optimizer]
        for group in layer_map.group_names
    }
    # docs/design.md section 3, rule 1: a model frozen before its optimizer was built has
    # blocks the optimizer never sees; unfreezing them later would train nothing.
    missing = [
        group
        for group in layer_map.group_names
        if block_index(group) is not None and not groups[group]
    ]
    wanted = {"embed": config.train_embeddings, "head": config.train_head}
    wanted["extras"] = config.train_extras
    missing += [
        g for g in ("embed", "head", "extras") if wanted[g] and g in groups and not groups[g]
    ]
    if missing:
        raise ValueError(
            f"groups {missing} have no parameter in the optimizer, so LISA could never "
            "train them. Build the optimizer before anything is frozen (Lisa freezes "
            "itself), or switch the group off (train_embeddings/train_head/train_extras)"
        )
    return groups
