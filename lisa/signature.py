"""Layer signatures: a compact, wrapper-independent description of a model's blocks.

A policy, a LISA config or a norms table made on one model records the signature of its blocks
(count, parameter names relative to their block, shapes), and refuses another model at the
point of use with the first difference it finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lisa.layers import LayerMap, block_group

__all__ = ["check_layer_signature", "layer_signature", "signature_difference"]


def layer_signature(source: LayerMap | nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """Compact, wrapper-independent description of a model's blocks.

    Parameter names are taken relative to their block, with peft's ``.base_layer`` removed and
    adapter parameters (``lora_*``) skipped, so a model and its LoRA-wrapped copy agree.

    Args:
        source: a LayerMap, a model, a ``LayerMap.signature()`` dict (e.g. from a sidecar), or
            a signature this function returned (passed through after a check).

    Returns:
        {"num_blocks": N, "group_names": [...], "blocks": [[[name, shape], ...] per block]}.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
        >>> signature = layer_signature(model)
        >>> signature["num_blocks"], signature["blocks"][0][0]
        (2, ['attn.c_attn.bias', [48]])
    """
    if isinstance(source, nn.Module):
        source = LayerMap.from_model(source)
    full = source.signature() if isinstance(source, LayerMap) else dict(source)
    if "groups" not in full and {"num_blocks", "group_names", "blocks"} <= set(full):
        return {
            "num_blocks": int(full["num_blocks"]),
            "group_names": list(full["group_names"]),
            "blocks": full["blocks"],
        }
    try:
        num_blocks = int(full["num_blocks"])
        blocks_path = str(full["blocks_path"])
        groups = full["groups"]
        group_names = list(full["group_names"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a layer-map signature (missing or bad {error})") from error
    blocks = []
    for index in range(num_blocks):
        marker = f"{blocks_path}.{index}."
        entries = []
        for name, shape in groups.get(block_group(index), []):
            if "lora_" in name:
                continue
            relative = name.split(marker, 1)[-1].replace(".base_layer", "")
            entries.append([relative, [int(s) for s in shape]])
        blocks.append(sorted(entries))
    return {"num_blocks": num_blocks, "group_names": group_names, "blocks": blocks}


def signature_difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    """The first difference between two ``layer_signature`` dicts, in words; None if equal.

    Example:
        >>> signature_difference({"num_blocks": 2, "group_names": [], "blocks": []},
        ...                      {"num_blocks": 3, "group_names": [], "blocks": []})
        'block count: expected 2, the model has 3'
    """
    if expected["num_blocks"] != actual["num_blocks"]:
        return f"block count: expected {expected['num_blocks']}, the model has {actual['num_blocks']}"
    if list(expected["group_names"]) != list(actual["group_names"]):
        return (
            f"group names: expected {list(expected['group_names'])}, the model has "
            f"{list(actual['group_names'])}"
        )
    for index, (mine, theirs) in enumerate(zip(expected["blocks"], actual["blocks"], strict=True)):
        if [list(map(_freeze, e)) for e in mine] == [list(map(_freeze, e)) for e in theirs]:
            continue
        mine_d = {name: tuple(shape) for name, shape in mine}
        theirs_d = {name: tuple(shape) for name, shape in theirs}
        for name in sorted(set(mine_d) | set(theirs_d)):
            if mine_d.get(name) != theirs_d.get(name):
                return (
                    f"block {index} parameter {name!r}: expected shape "
                    f"{mine_d.get(name, 'absent')}, the model has {theirs_d.get(name, 'absent')}"
                )
    return None


def check_layer_signature(
    target: LayerMap | nn.Module, expected: Mapping[str, Any], *, what: str = "it"
) -> None:
    """Raise ValueError when ``target``'s blocks differ from the ``expected`` signature.

    Args:
        target: the model (or its LayerMap) about to be used.
        expected: the ``layer_signature`` recorded when ``what`` was made.
        what: names the thing in the message, e.g. "the policy".

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> small = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
        >>> large = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2))
        >>> check_layer_signature(large, layer_signature(small), what="the policy")
        Traceback (most recent call last):
        ...
        ValueError: the policy was made for another model (block count: expected 2, the model has 3); use it with the model it was made for
    """
    difference = signature_difference(layer_signature(expected), layer_signature(target))
    if difference is not None:
        raise ValueError(
            f"{what} was made for another model ({difference}); use it with the model it was "
            "made for"
        )


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
