"""param_groups: optimizer parameter groups with a learning rate and weight decay per layer group.

On a small model the embedding dominates what LISA trains (SmolLM2-135M: the tied embedding is
28.3M of the 35.4M parameters of a gamma-2 period), yet it trains at the blocks' rate. This
factory gives the embedding (E), the head (H) and the extras (final norm, ...) their own rates
and decays, as a list of groups any torch optimizer takes, in the style of PEFT's
``create_loraplus_optimizer``: a factory, not an optimizer subclass.

Tied E/H: a weight shared by the embedding and the head is one parameter and belongs to
``embed`` (:class:`lisa.layers.LayerMap`), so ``lr_embed`` / ``weight_decay_embed`` apply to
it. A head setting given on a tied model that differs from the embedding's is refused: it
could not apply to anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap, block_index
from lisa.validation import check_positive_float

__all__ = ["param_groups"]

BLOCKS = "blocks"
_KINDS = (EMBED, BLOCKS, HEAD, EXTRAS)


def _one_dimensional(name: str, parameter: nn.Parameter) -> bool:
    # Biases and norm weights are the 1-D parameters of a transformer (nanoGPT's rule).
    return parameter.ndim < 2


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    lr_embed: float | None = None,
    lr_head: float | None = None,
    lr_extras: float | None = None,
    weight_decay: float = 0.0,
    weight_decay_embed: float | None = None,
    weight_decay_head: float | None = None,
    weight_decay_extras: float | None = None,
    no_decay: Callable[[str, nn.Parameter], bool] | None = None,
    layer_map: LayerMap | None = None,
) -> list[dict[str, Any]]:
    """Optimizer groups: embed, blocks, head and extras, each with its own lr and weight decay.

    The rate of group g is ``lr_g`` when given, else ``lr``; its decay ``weight_decay_g`` when
    given, else ``weight_decay``; the blocks take ``lr`` and ``weight_decay``. Parameters for
    which ``no_decay(name, parameter)`` holds get weight decay 0 (default: 1-D parameters,
    i.e. biases and norm weights). Every parameter with ``requires_grad`` is in exactly one
    group (checked); frozen ones are left out, so build the groups before LISA freezes
    anything (docs/design.md section 3, rule 1). A schedule scales every group's rate by the
    same factor, so the ratios hold through warm-up and decay.

    Args:
        model: the model (plain or PEFT-wrapped; names as in ``model.named_parameters()``).
        lr: the base learning rate (the blocks').
        lr_embed, lr_head, lr_extras: absolute rates of E, H and the extras; None for ``lr``.
        weight_decay: the base weight decay (the blocks').
        weight_decay_embed, weight_decay_head, weight_decay_extras: decays of E, H, extras.
        no_decay: parameters never decayed; None for every 1-D parameter.
        layer_map: a LayerMap of ``model``; built when None.

    Returns:
        A list of dicts with keys ``params``, ``lr``, ``weight_decay`` and ``name``
        (``"embed"``, ``"blocks/no_decay"``, ...), empty groups left out.

    Raises:
        ValueError: a rate or decay that is not a number (> 0, >= 0), or a head setting that
            differs from the embedding's on a model whose E and H share one weight.

    Example:
        >>> import torch
        >>> from lisa_apps.models import load_model
        >>> model, _ = load_model("tiny-llama")
        >>> groups = param_groups(model, lr=1e-4, lr_embed=1e-5)
        >>> [(g["name"], g["lr"]) for g in groups]  # doctest: +NORMALIZE_WHITESPACE
        [('embed', 1e-05), ('blocks', 0.0001), ('blocks/no_decay', 0.0001),
         ('head', 0.0001), ('extras/no_decay', 0.0001)]
        >>> optimizer = torch.optim.AdamW(groups)
    """
    rates = {EMBED: lr_embed, BLOCKS: lr, HEAD: lr_head, EXTRAS: lr_extras}
    decays = {
        EMBED: weight_decay_embed,
        BLOCKS: weight_decay,
        HEAD: weight_decay_head,
        EXTRAS: weight_decay_extras,
    }
    check_positive_float("lr", lr)
    _check_decay("weight_decay", weight_decay)
    for kind in (EMBED, HEAD, EXTRAS):
        if rates[kind] is not None:
            check_positive_float(f"lr_{kind}", rates[kind], hint="or None for lr")
        if decays[kind] is not None:
            _check_decay(f"weight_decay_{kind}", decays[kind])
    given = {"lr": rates[HEAD] is not None, "weight_decay": decays[HEAD] is not None}
    rates = {kind: lr if rate is None else float(rate) for kind, rate in rates.items()}
    decays = {kind: weight_decay if d is None else float(d) for kind, d in decays.items()}
    layer_map = LayerMap.from_model(model) if layer_map is None else layer_map
    if layer_map.model is not model:
        raise ValueError("layer_map was built for another model; build it from this model")
    if layer_map.tied:
        for what, values in (("lr", rates), ("weight_decay", decays)):
            if given[what] and values[HEAD] != values[EMBED]:
                raise ValueError(
                    f"{what}_head={values[HEAD]:g} differs from {what}_embed={values[EMBED]:g}, "
                    f"but {type(model).__name__} ties its embedding and head (one weight, "
                    f"trained as the embedding); give the rate with {what}_embed"
                )

    exempt = _one_dimensional if no_decay is None else no_decay
    members: dict[tuple[str, bool], list[nn.Parameter]] = {
        (kind, decayed): [] for kind in _KINDS for decayed in (True, False)
    }
    for group in layer_map.group_names:
        kind = BLOCKS if block_index(group) is not None else group
        for name, parameter in layer_map.parameters(group):
            if parameter.requires_grad:
                members[(kind, not exempt(name, parameter))].append(parameter)
    groups = [
        {
            "params": params,
            "lr": rates[kind],
            "weight_decay": decays[kind] if decayed else 0.0,
            "name": kind if decayed else f"{kind}/no_decay",
        }
        for (kind, decayed), params in members.items()
        if params
    ]
    # nanochat's check: every trainable parameter in exactly one group.
    placed = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(placed) == len(set(placed)) and set(placed) == trainable, "groups must partition"
    return groups


def _check_decay(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")
