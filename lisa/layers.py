"""LayerMap: partition a model's parameters into LISA's groups embed, block.0..N-1, head, extras.

LISA (Pan et al. 2024) always trains the embedding (E) and the output head (H) and samples
among the N middle blocks. This module finds those groups in a transformers model (plain or
PEFT-wrapped) and guarantees that every parameter lands in exactly one of them.

Discovery of the blocks list (docs/design.md section 2, and rule 5 of section 3): an explicit
``blocks_path``, else a table of known architectures, else the longest ``nn.ModuleList`` of
same-class modules, else a ValueError that says how to pass ``blocks_path``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)

EMBED = "embed"
HEAD = "head"
EXTRAS = "extras"
_BLOCK_PREFIX = "block."

# model_type -> path of the blocks list relative to the backbone (`model.base_model`, e.g. the
# `model` of LlamaForCausalLM). Relative paths let one entry serve every head class
# (ForCausalLM, ForSequenceClassification, the bare backbone).
_KNOWN_BLOCKS_PATHS: dict[str, str] = {
    "llama": "layers",
    "mistral": "layers",
    "mixtral": "layers",
    "qwen2": "layers",
    "qwen2_moe": "layers",
    "qwen3": "layers",
    "qwen3_moe": "layers",
    "gemma": "layers",
    "gemma2": "layers",
    "gemma3_text": "layers",
    "phi": "layers",
    "phi3": "layers",
    "phimoe": "layers",
    "stablelm": "layers",
    "olmo": "layers",
    "olmo2": "layers",
    "olmoe": "layers",
    "cohere": "layers",
    "cohere2": "layers",
    "granite": "layers",
    "granitemoe": "layers",
    "starcoder2": "layers",
    "smollm3": "layers",
    "deepseek_v2": "layers",
    "deepseek_v3": "layers",
    "gpt_neox": "layers",
    "helium": "layers",
    "glm": "layers",
    "exaone4": "layers",
    "gpt2": "h",
    "gpt_bigcode": "h",
    "gptj": "h",
    "codegen": "h",
    "falcon": "h",
    "bloom": "h",
    "gpt_neo": "h",
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "electra": "encoder.layer",
    "camembert": "encoder.layer",
    "distilbert": "transformer.layer",
    "opt": "decoder.layers",
    "mpt": "blocks",
}


def block_group(index: int) -> str:
    """Name of the group of block `index`: ``block_group(3) == "block.3"``.

    Args:
        index: block index, 0 <= index.

    Returns:
        The group name.
    """
    if index < 0:
        raise ValueError(f"block index={index} must be >= 0")
    return f"{_BLOCK_PREFIX}{index}"


def block_index(group: str) -> int | None:
    """Block index of a group name: ``"block.3" -> 3``, ``"embed" -> None``.

    Args:
        group: a group name.

    Returns:
        The index for a block group, None for embed, head, extras or any other name.
    """
    suffix = group.removeprefix(_BLOCK_PREFIX)
    return int(suffix) if suffix != group and suffix.isdigit() else None


@dataclass(frozen=True, eq=False, repr=False)
class LayerMap:
    """Ordered partition of a model's parameters: embed | block.0 .. block.{N-1} | head | extras.

    Every parameter of ``model.named_parameters()`` (a tied one once) is in exactly one group,
    so sum_g numel(g) == sum(p.numel() for p in model.parameters()). A weight shared by the
    embedding and the head is one parameter and belongs to ``embed`` alone (``tied``).
    Build it with :meth:`from_model`.
    """

    model: nn.Module
    blocks_path: str  # relative to the unwrapped base model, e.g. "model.layers"
    num_blocks: int
    tied: bool
    discovery: str  # "explicit" | "known-architecture" | "introspection"
    _groups: dict[str, tuple[tuple[str, nn.Parameter], ...]]
    _group_of: dict[str, str]

    @classmethod
    def from_model(cls, model: nn.Module, blocks_path: str | None = None) -> LayerMap:
        """Build the map of `model` (a transformers model, possibly PEFT-wrapped).

        Args:
            model: the model; PEFT wrappers are unwrapped for discovery, but parameter names
                are those of ``model.named_parameters()``.
            blocks_path: dotted path of the blocks ``nn.ModuleList`` relative to the unwrapped
                base model (e.g. ``"model.layers"``, ``"transformer.h"``); None to discover it.

        Returns:
            The LayerMap.

        Raises:
            ValueError: `blocks_path` does not resolve to a non-empty ModuleList, or no blocks
                list can be found without it.

        Example:
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> config = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
            >>> layer_map = LayerMap.from_model(GPT2LMHeadModel(config))
            >>> layer_map.group_names, layer_map.blocks_path, layer_map.tied
            (('embed', 'block.0', 'block.1', 'extras'), 'transformer.h', True)
            >>> [(name, tuple(p.shape)) for name, p in layer_map.parameters("embed")]
            [('transformer.wte.weight', (64, 16)), ('transformer.wpe.weight', (32, 16))]
        """
        base = _unwrap(model)
        path, blocks, discovery = _find_blocks(base, blocks_path)
        embed_modules = _embedding_modules(base, blocks)
        head_modules = _head_modules(base, path, blocks)

        # First claim wins: a weight tied between E and H goes to embed.
        owner: dict[int, str] = {}
        _claim(owner, embed_modules, EMBED)
        for index, block in enumerate(blocks):
            _claim(owner, [block], block_group(index))
        _claim(owner, head_modules, HEAD)
        embed_ids = {id(p) for m in embed_modules for p in m.parameters()}
        tied = any(id(p) in embed_ids for m in head_modules for p in m.parameters())

        order = [EMBED, *(block_group(i) for i in range(len(blocks))), HEAD, EXTRAS]
        members: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in order}
        for name, parameter in model.named_parameters():
            members[owner.get(id(parameter), EXTRAS)].append((name, parameter))
        groups = {g: tuple(pairs) for g, pairs in members.items()}
        _check_partition(model, groups)
        logger.debug(
            "%s: %d blocks at %r (%s), tied=%s",
            type(model).__name__,
            len(blocks),
            path,
            discovery,
            tied,
        )
        return cls(
            model=model,
            blocks_path=path,
            num_blocks=len(blocks),
            tied=tied,
            discovery=discovery,
            _groups=groups,
            _group_of={name: g for g, pairs in groups.items() for name, _ in pairs},
        )

    @property
    def group_names(self) -> tuple[str, ...]:
        """Groups in order; every block is listed, embed/head/extras only when non-empty."""
        return tuple(g for g, pairs in self._groups.items() if pairs or block_index(g) is not None)

    def parameters(self, group: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of `group`, names as in ``model.named_parameters()``.

        An empty canonical group ("head" of a tied model) gives []; an unknown name raises
        KeyError.
        """
        if group not in self._groups:
            raise KeyError(f"unknown group {group!r}; the groups are {self.group_names}")
        return list(self._groups[group])

    def block_parameters(self, index: int) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of block `index`, 0 <= index < num_blocks."""
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block index={index} is outside 0..{self.num_blocks - 1}")
        return self.parameters(block_group(index))

    def group_of(self, parameter_name: str) -> str:
        """Group of a parameter given its name in ``model.named_parameters()``."""
        try:
            return self._group_of[parameter_name]
        except KeyError:
            raise KeyError(
                f"{parameter_name!r} is not a parameter name of {type(self.model).__name__}; "
                "use the names of model.named_parameters() for the model the map was built from"
            ) from None

    def numel(self, group: str) -> int:
        """Number of elements in `group`'s parameters."""
        return sum(p.numel() for _, p in self.parameters(group))

    def signature(self) -> dict:
        """JSON-able description: model class, blocks, group names, parameter names and shapes."""
        return {
            "model_class": type(self.model).__name__,
            "base_model_class": type(_unwrap(self.model)).__name__,
            "num_blocks": self.num_blocks,
            "blocks_path": self.blocks_path,
            "tied": self.tied,
            "group_names": list(self.group_names),
            "groups": {
                g: [[name, list(p.shape)] for name, p in self._groups[g]] for g in self.group_names
            },
        }

    def __repr__(self) -> str:
        return (
            f"LayerMap({type(self.model).__name__}, num_blocks={self.num_blocks}, "
            f"blocks_path={self.blocks_path!r}, tied={self.tied})"
        )


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT wrappers (PeftModel -> LoraModel -> base)."""
    peft = sys.modules.get("peft")
    if peft is None:  # peft never imported: the model cannot be PEFT-wrapped
        return model
    from peft.tuners.tuners_utils import BaseTuner

    while True:
        if isinstance(model, peft.PeftModel):
            model = model.get_base_model()
        elif isinstance(model, BaseTuner):
            model = model.model
        else:
            return model


def _resolve(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted path of attribute names and list indices (never eval)."""
    module = root
    for depth, part in enumerate(path.split(".")):
        done = ".".join(path.split(".")[:depth]) or type(root).__name__
        if part.isdigit() and isinstance(module, nn.ModuleList | nn.Sequential):
            if int(part) >= len(module):
                raise ValueError(
                    f"blocks_path={path!r}: index {part} is out of range for {done!r} "
                    f"(length {len(module)})"
                )
            module = module[int(part)]
        else:
            child = getattr(module, part, None) if part.isidentifier() else None
            if not isinstance(child, nn.Module):
                children = [name for name, _ in module.named_children()]
                raise ValueError(
                    f"blocks_path={path!r}: {done!r} has no submodule {part!r} "
                    f"(its submodules are {children})"
                )
            module = child
    return module


def _find_blocks(base: nn.Module, blocks_path: str | None) -> tuple[str, nn.ModuleList, str]:
    """(path, blocks list, how it was found), in the discovery order of the module docstring."""
    if blocks_path is not None:
        blocks = _resolve(base, blocks_path)
        if not isinstance(blocks, nn.ModuleList | nn.Sequential) or len(blocks) == 0:
            raise ValueError(
                f"blocks_path={blocks_path!r} resolves to {type(blocks).__name__}, "
                "not a non-empty nn.ModuleList of blocks"
            )
        return blocks_path, blocks, "explicit"

    model_type = getattr(getattr(base, "config", None), "model_type", None)
    relative = _KNOWN_BLOCKS_PATHS.get(model_type)
    if relative is not None:
        prefix = getattr(base, "base_model_prefix", "")
        candidates = [f"{prefix}.{relative}"] if prefix else []
        for path in [*candidates, relative]:  # head model first, then a bare backbone
            try:
                blocks = _resolve(base, path)
            except ValueError:
                continue
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                return path, blocks, "known-architecture"
        logger.debug("model_type %r: table path %r not found, introspecting", model_type, relative)

    lists = [
        (name, m)
        for name, m in base.named_modules()
        if isinstance(m, nn.ModuleList)
        and len(m) > 0
        and len({type(block) for block in m}) == 1
        and any(True for _ in m.parameters())
    ]
    # A list nested in another candidate (experts inside a block) is not the blocks list.
    outer = [(n, m) for n, m in lists if not any(n.startswith(f"{o}.") for o, _ in lists)]
    if outer:
        longest = max(len(m) for _, m in outer)
        best = [(n, m) for n, m in outer if len(m) == longest]
        if len(best) == 1:
            return best[0][0], best[0][1], "introspection"
        raise ValueError(
            f"{type(base).__name__} has several block lists of length {longest}: "
            f"{[n for n, _ in best]}; choose one with blocks_path, e.g. "
            f"LayerMap.from_model(model, blocks_path={best[0][0]!r})"
        )
    raise ValueError(
        f"cannot find the blocks of {type(base).__name__} (model_type={model_type!r}): it is "
        "not a known architecture and has no nn.ModuleList of same-class modules. Pass "
        "blocks_path, the dotted path of the blocks list relative to the base model, e.g. "
        "LayerMap.from_model(model, blocks_path='model.layers')"
    )


def _accessor(base: nn.Module, method: str) -> nn.Module | None:
    """base.get_input_embeddings() / get_output_embeddings(), or None where not available."""
    try:
        module = getattr(base, method)()
    except (AttributeError, NotImplementedError):
        return None
    return module if isinstance(module, nn.Module) else None


def _contains(parent: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in parent.modules())


def _wrapped(module: nn.Module) -> nn.Module:
    """The layer a PEFT wrapper stands for (LoRA's base_layer, modules_to_save's original)."""
    for attribute in ("base_layer", "original_module"):
        inner = getattr(module, attribute, None)
        if isinstance(inner, nn.Module):
            return inner
    return module


def _embedding_modules(base: nn.Module, blocks: nn.Module) -> list[nn.Module]:
    """Token embedding plus the position/token-type embeddings and embedding norm next to it."""
    token = _accessor(base, "get_input_embeddings")
    output = _accessor(base, "get_output_embeddings")
    name = next((n for n, m in base.named_modules() if m is token), None)
    if token is None or name is None:  # custom model: every embedding outside the blocks
        inside = {id(m) for m in blocks.modules()}
        return [
            m
            for m in base.modules()
            if isinstance(_wrapped(m), nn.Embedding) and id(m) not in inside
        ]
    parent = base.get_submodule(name.rpartition(".")[0])

    def foreign(module: nn.Module) -> bool:
        return _contains(module, blocks) or (output is not None and _contains(module, output))

    if parent is not base and not foreign(parent):
        return [parent]  # a dedicated embeddings module (BERT-like): all of it is E
    siblings = [
        child
        for child_name, child in parent.named_children()
        if child is not token
        and not foreign(child)
        # position and token-type embeddings, and modules named after the embedding (Bloom's
        # word_embeddings_layernorm, OPT's embed_positions): a naming convention, so only
        # siblings of the token embedding are considered.
        and (isinstance(_wrapped(child), nn.Embedding) or "emb" in child_name.lower())
    ]
    return [token, *siblings]


def _head_modules(base: nn.Module, blocks_path: str, blocks: nn.ModuleList) -> list[nn.Module]:
    """Output side: the direct children of the base beside the backbone (lm_head, cls, score)."""
    token = _accessor(base, "get_input_embeddings")
    output = _accessor(base, "get_output_embeddings")
    heads: list[nn.Module] = []
    backbone, _, rest = blocks_path.partition(".")
    if rest:  # the base is a head model around a backbone child; else the base is the backbone
        block_type = type(blocks[0])
        for child_name, child in base.named_children():
            if child_name == backbone or (token is not None and _contains(child, token)):
                continue
            if any(isinstance(m, block_type) for m in child.modules()):
                continue  # another stack of blocks (an encoder-decoder's other half) is extras
            heads.append(child)
    if (
        output is not None
        and not any(_contains(h, output) for h in heads)
        and not _contains(blocks, output)
    ):
        heads.append(output)
    return heads


def _claim(owner: dict[int, str], modules: Iterable[nn.Module], group: str) -> None:
    for module in modules:
        for parameter in module.parameters():
            owner.setdefault(id(parameter), group)


def _check_partition(model: nn.Module, groups: dict[str, tuple[tuple[str, nn.Parameter], ...]]):
    """Every parameter in exactly one group and the element counts add up (a bug otherwise)."""
    placed = [p for pairs in groups.values() for _, p in pairs]
    expected = list(model.parameters())
    placed_numel = sum(p.numel() for p in placed)
    expected_numel = sum(p.numel() for p in expected)
    if len({id(p) for p in placed}) != len(placed) or {id(p) for p in placed} != {
        id(p) for p in expected
    }:
        raise RuntimeError(
            f"LayerMap bug: {len(placed)} placed parameters vs {len(expected)} in "
            f"{type(model).__name__}; please report with the model class"
        )
    if placed_numel != expected_numel:
        raise RuntimeError(
            f"LayerMap bug: groups hold {placed_numel} elements but {type(model).__name__} "
            f"has {expected_numel}; please report with the model class"
        )
