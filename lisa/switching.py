"""The LISA engine: which blocks train in each period, applied to a model and its optimizer.

Every `interval` optimizer steps the engine draws `gamma` of the model's N blocks with a
sampler, freezes everything else except the embedding (E), the LM head (H) and the "extras"
(final norm, ...), and applies a state policy to the optimizer (Pan et al. 2024,
arXiv 2403.17919, Algorithm 1; DESIGN.md section 3 lists the rules enforced here).

The one pattern for a plain PyTorch loop::

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)  # over ALL parameters
    lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=20))
    for batch in batches:
        lisa.begin_step()             # before the forward of every optimizer step
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lisa.layers import LayerMap, block_index
from lisa.samplers import Sampler, available_samplers, make_sampler

__all__ = ["STATE_POLICIES", "Lisa", "LisaConfig"]

logger = logging.getLogger(__name__)

STATE_POLICIES = ("drop", "reset", "keep")
_STATE_VERSION = 1


def _is_sampler(obj: object) -> bool:
    """Duck-typed check of the Sampler protocol (num_blocks and sample)."""
    return callable(getattr(obj, "sample", None)) and isinstance(
        getattr(obj, "num_blocks", None), int
    )


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but gamma=True is a bug, not a 1.
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LisaConfig:
    """What LISA trains and how often it re-draws.

    Each period of `interval` optimizer steps trains E, H, extras (each unless switched off)
    and `gamma` sampled blocks; every other parameter is frozen.

    Args:
        gamma: number of blocks active per period (for a named sampler). With a Sampler
            instance the sampler decides; if it has a `gamma` attribute (the fixed-size
            samplers) it must equal this field, otherwise (e.g. "bernoulli") this field is
            ignored.
        interval: K, optimizer steps per period (>= 1).
        sampler: a registered sampler name (built as `make_sampler(name, N, gamma=gamma)`)
            or a Sampler instance built for the model's block count.
        seed: seed of the engine's `np.random.Generator(np.random.PCG64(seed))`; every
            rank must use the same seed so that every rank draws the same blocks.
        state_policy: "drop" frees grads and optimizer state of every parameter that leaves
            the active set; "reset" clears all optimizer state (E and H included) at every
            switch; "keep" frees optimizer state of nothing (ablations only).
        train_embeddings: train E every step. On a tied model the shared matrix is E.
        train_head: train H every step (no separate parameter on a tied model).
        train_extras: train the parameters outside E, H and the blocks (final norm, ...).
        blocks_path: dotted path of the blocks ModuleList, for models LayerMap cannot map.

    Example:
        >>> LisaConfig(gamma=2, interval=5).state_policy
        'drop'
    """

    gamma: int = 2
    interval: int = 20
    sampler: str | Sampler = "uniform"
    seed: int = 0
    state_policy: Literal["drop", "reset", "keep"] = "drop"
    train_embeddings: bool = True
    train_head: bool = True
    train_extras: bool = True
    blocks_path: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.gamma) or self.gamma < 0:
            raise ValueError(
                f"gamma={self.gamma!r} must be an integer >= 0 (the number of blocks "
                "trained per period, e.g. gamma=2)"
            )
        if not _is_int(self.interval) or self.interval < 1:
            raise ValueError(
                f"interval={self.interval!r} must be an integer >= 1 (optimizer steps "
                "between switches, e.g. interval=20)"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        if self.state_policy not in STATE_POLICIES:
            raise ValueError(
                f"state_policy={self.state_policy!r} is unknown; use one of {STATE_POLICIES}"
            )
        for name in ("train_embeddings", "train_head", "train_extras"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if isinstance(self.sampler, str):
            if self.sampler not in available_samplers():
                raise ValueError(
                    f"sampler={self.sampler!r} is not registered; use one of "
                    f"{available_samplers()} or pass a Sampler instance "
                    "(lisa.samplers.make_sampler / register_sampler)"
                )
        elif not _is_sampler(self.sampler):
            raise ValueError(
                f"sampler={self.sampler!r} is neither a registered name nor a Sampler "
                "(an object with num_blocks and sample(rng))"
            )
        else:
            sampler_gamma = getattr(self.sampler, "gamma", None)
            if sampler_gamma is not None and sampler_gamma != self.gamma:
                raise ValueError(
                    f"gamma={self.gamma} but the sampler draws gamma={sampler_gamma} blocks; "
                    f"pass LisaConfig(gamma={sampler_gamma}, sampler=...) so both agree"
                )
        if self.blocks_path is not None and (
            not isinstance(self.blocks_path, str) or not self.blocks_path
        ):
            raise ValueError(
                f"blocks_path={self.blocks_path!r} must be a non-empty dotted path such as "
                "'model.layers', or None to discover it"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; a Sampler instance cannot be written, so it raises.

        Returns:
            dict of the fields (sampler as its registered name).

        Example:
            >>> LisaConfig(gamma=1).to_dict()["gamma"]
            1
        """
        if not isinstance(self.sampler, str):
            raise ValueError(
                "a LisaConfig with a Sampler instance cannot be written as JSON; "
                "use a registered sampler name (register_sampler) to make it serialisable"
            )
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Lisa:
    """The LISA switching engine for one model and its optimizer.

    Period i = step // interval trains A_i = E + H + extras + blocks S_i, with S_i drawn by
    the sampler from the engine's own np.random.Generator(PCG64(seed)). A switch sets
    requires_grad=False and grad=None on every parameter outside A_i, requires_grad=True
    inside it, then applies the state policy to `optimizer.state`.

    Call `begin_step()` once at the start of every optimizer step, before the forward pass
    (with gradient accumulation: once per optimizer step, not per micro-batch). It switches on
    the first call and whenever the step enters a new period; after `load_state_dict` its
    first call re-applies the restored active set unless that step starts a new period.
    Build the optimizer over all parameters first: the engine only toggles parameters that
    are in the optimizer and refuses a model whose blocks were frozen before the optimizer
    was built (such blocks could never train).

    Args:
        model: the model (plain, or PEFT-wrapped: only optimizer parameters are toggled).
        optimizer: any torch optimizer with per-parameter state (AdamW, SGD with momentum...).
        config: the LisaConfig.
        layer_map: a LayerMap of `model`; built with config.blocks_path when None.

    Example:
        >>> from lisa.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> lisa = Lisa(model, optimizer, LisaConfig(gamma=1, interval=2))
        >>> lisa.begin_step()
        (3,)
        >>> lisa.trainable_groups()
        ('embed', 'block.3', 'head', 'extras')
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: LisaConfig,
        layer_map: LayerMap | None = None,
    ) -> None:
        if not isinstance(config, LisaConfig):
            raise TypeError(f"config must be a LisaConfig, got {type(config).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.layer_map = self._resolve_layer_map(model, config, layer_map)
        self.sampler = self._build_sampler(config, self.layer_map.num_blocks)
        self._groups = self._managed_groups(model, optimizer, self.layer_map, config)
        if self.layer_map.tied and config.train_head and not config.train_embeddings:
            logger.warning(
                "the model ties its embedding and head: the shared matrix belongs to 'embed' "
                "and stays frozen with train_embeddings=False, so the head does not train"
            )
        self._rng = np.random.Generator(np.random.PCG64(config.seed))
        self.active_blocks: tuple[int, ...] = ()
        self.history: list[tuple[int, tuple[int, ...]]] = []
        self.freed_bytes_total = 0
        self.last_freed_bytes = 0
        self._period: int | None = None
        self._next_step = 0
        self._reapply_pending = False

    # construction checks -------------------------------------------------------------------

    @staticmethod
    def _resolve_layer_map(
        model: nn.Module, config: LisaConfig, layer_map: LayerMap | None
    ) -> LayerMap:
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

    @staticmethod
    def _build_sampler(config: LisaConfig, num_blocks: int) -> Sampler:
        if isinstance(config.sampler, str):
            if config.gamma > num_blocks:
                raise ValueError(
                    f"gamma={config.gamma} is larger than the model's {num_blocks} blocks; "
                    f"use gamma <= {num_blocks}"
                )
            try:
                return make_sampler(config.sampler, num_blocks, gamma=config.gamma)
            except TypeError as error:
                raise ValueError(
                    f"sampler={config.sampler!r} cannot be built from gamma alone ({error}); "
                    f"pass an instance, e.g. make_sampler({config.sampler!r}, {num_blocks}, ...)"
                ) from error
        sampler = config.sampler
        if sampler.num_blocks != num_blocks:
            raise ValueError(
                f"the sampler was built for num_blocks={sampler.num_blocks} but the model has "
                f"{num_blocks} blocks; build it with make_sampler(name, {num_blocks}, ...)"
            )
        return sampler

    @staticmethod
    def _managed_groups(
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
        # DESIGN rule 1: a model frozen before its optimizer was built has blocks the
        # optimizer never sees; unfreezing them later would train nothing.
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

    # switching -----------------------------------------------------------------------------

    def _trained_groups(self, active_blocks: Iterable[int]) -> set[str]:
        config = self.config
        trained = {f"block.{i}" for i in active_blocks}
        if config.train_embeddings:
            trained.add("embed")
        if config.train_head:
            trained.add("head")
        if config.train_extras:
            trained.add("extras")
        return trained

    def _draw(self) -> tuple[int, ...]:
        drawn = tuple(sorted({int(i) for i in self.sampler.sample(self._rng)}))
        if any(i < 0 or i >= self.layer_map.num_blocks for i in drawn):
            raise ValueError(
                f"the sampler returned blocks {drawn} outside 0..{self.layer_map.num_blocks - 1}"
            )
        return _broadcast_from_rank_zero(drawn)

    def _apply(self, active_blocks: tuple[int, ...], *, switch: bool) -> int:
        """Set requires_grad/grad for `active_blocks` and apply the state policy.

        Returns:
            bytes of grads and optimizer state released.
        """
        trained = self._trained_groups(active_blocks)
        state = self.optimizer.state
        freed = 0
        for group, params in self._groups.items():
            is_trained = group in trained
            for p in params:
                if is_trained:
                    p.requires_grad_(True)
                    continue
                p.requires_grad_(False)
                if p.grad is not None:
                    freed += p.grad.nbytes
                    p.grad = None
                # "drop" (and re-applying a restored set) frees what a frozen parameter holds.
                if self.config.state_policy == "drop" and p in state:
                    freed += _state_nbytes(state[p])
                    del state[p]
        if switch and self.config.state_policy == "reset":
            for p in list(state.keys()):
                freed += _state_nbytes(state[p])
                del state[p]
        return freed

    def begin_step(self, step: int | None = None) -> tuple[int, ...]:
        """Start an optimizer step: switch if it opens a new period, else keep the set.

        period(step) = step // interval; a draw happens on the first call and whenever
        period(step) differs from the period of the current set.

        Args:
            step: number of optimizer steps already taken (Trainer's global_step). None
                counts calls: the previous step + 1, starting at 0.

        Returns:
            the active blocks for this step (sorted).

        Example:
            >>> from lisa.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> optimizer = torch.optim.AdamW(model.parameters())
            >>> lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=2))
            >>> [lisa.begin_step() for _ in range(4)]  # a new draw every 2 steps
            [(2, 3), (2, 3), (0, 1), (0, 1)]
        """
        if step is None:
            step = self._next_step
        elif not _is_int(step) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0 (optimizer steps taken)")
        step = int(step)
        period = step // self.config.interval
        if self._period is None or period != self._period:
            self._ensure_input_grads()
            active = self._draw()
            freed = self._apply(active, switch=True)
            self.active_blocks = active
            self._period = period
            self.history.append((step, active))
            self.last_freed_bytes = freed
            self.freed_bytes_total += freed
            logger.info("LISA step %d: active blocks %s, freed %d bytes", step, active, freed)
        elif self._reapply_pending:
            self._apply(self.active_blocks, switch=False)
            logger.info("LISA step %d: restored active blocks %s", step, self.active_blocks)
        self._reapply_pending = False
        self._next_step = step + 1
        return self.active_blocks

    def _ensure_input_grads(self) -> None:
        """Reentrant activation checkpointing needs an input that requires grad.

        With E frozen, the hidden states entering a checkpointed block do not require grad,
        and reentrant checkpointing then computes no grad for the block's parameters. Only
        in that case do we make the embedding output require grad (DESIGN rule 7); the
        non-reentrant default needs nothing and keeps backward stopping at the lowest
        active block.
        """
        if self.config.train_embeddings or not _uses_reentrant_checkpointing(self.model):
            return
        if getattr(self.model, "_require_grads_hooks", None) or getattr(
            self.model, "_require_grads_hook", None
        ):
            return
        enable = getattr(self.model, "enable_input_require_grads", None)
        if enable is None:
            raise ValueError(
                "reentrant activation checkpointing with train_embeddings=False needs the "
                "embedding output to require grad; use use_reentrant=False"
            )
        enable()
        logger.info("LISA: reentrant checkpointing with frozen embeddings: input grads enabled")

    # checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able schedule state: step, period, active set, RNG, sampler, history.

        Returns:
            dict that `load_state_dict` restores (json.dumps-able).

        Example:
            >>> import json
            >>> from lisa.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=1))
            >>> lisa.begin_step()
            (3,)
            >>> sorted(json.loads(json.dumps(lisa.state_dict())))  # doctest: +NORMALIZE_WHITESPACE
            ['active_blocks', 'freed_bytes_total', 'history', 'interval', 'num_blocks',
             'period', 'rng', 'sampler', 'step', 'version']
        """
        sampler_state = None
        if callable(getattr(self.sampler, "state_dict", None)):
            sampler_state = self.sampler.state_dict()
        return {
            "version": _STATE_VERSION,
            "num_blocks": self.layer_map.num_blocks,
            "interval": self.config.interval,
            "step": self._next_step,
            "period": self._period,
            "active_blocks": list(self.active_blocks),
            "rng": self._rng.bit_generator.state,
            "sampler": sampler_state,
            "history": [[step, list(blocks)] for step, blocks in self.history],
            "freed_bytes_total": self.freed_bytes_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a schedule saved by `state_dict` (the next begin_step re-applies it).

        Args:
            state: the dict from `state_dict()` (possibly through JSON).

        Example:
            >>> import json
            >>> from lisa.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> optimizer = torch.optim.AdamW(model.parameters())
            >>> lisa = Lisa(model, optimizer, LisaConfig(gamma=1))
            >>> lisa.begin_step()
            (3,)
            >>> text = json.dumps(lisa.state_dict())
            >>> resumed = Lisa(model, optimizer, LisaConfig(gamma=1))
            >>> resumed.load_state_dict(json.loads(text))
            >>> resumed.begin_step() == lisa.begin_step()  # the same next draw
            True
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"LISA state version {state.get('version')!r} is not {_STATE_VERSION}; "
                "it was written by another version of lisa"
            )
        if state["num_blocks"] != self.layer_map.num_blocks:
            raise ValueError(
                f"the saved LISA state is for {state['num_blocks']} blocks but this model has "
                f"{self.layer_map.num_blocks}; load it onto the model it was saved from"
            )
        if state["interval"] != self.config.interval:
            raise ValueError(
                f"the saved LISA state used interval={state['interval']} but the config has "
                f"interval={self.config.interval}; resume with the same LisaConfig"
            )
        if state["rng"].get("bit_generator") != "PCG64":
            raise ValueError(f"unexpected bit generator in LISA state: {state['rng']!r}")
        self._rng.bit_generator.state = state["rng"]
        if state["sampler"] is not None:
            if not callable(getattr(self.sampler, "load_state_dict", None)):
                raise ValueError(
                    "the saved LISA state has sampler state but this sampler is stateless; "
                    "resume with the same sampler"
                )
            self.sampler.load_state_dict(state["sampler"])
        self._next_step = int(state["step"])
        self._period = None if state["period"] is None else int(state["period"])
        self.active_blocks = tuple(int(i) for i in state["active_blocks"])
        self.history = [
            (int(step), tuple(int(i) for i in blocks)) for step, blocks in state["history"]
        ]
        self.freed_bytes_total = int(state["freed_bytes_total"])
        self.last_freed_bytes = 0
        self._reapply_pending = self._period is not None

    # conveniences --------------------------------------------------------------------------

    def trainable_groups(self) -> tuple[str, ...]:
        """Groups trained in the current period, in LayerMap order.

        Returns:
            e.g. ("embed", "block.1", "block.3", "head", "extras").
        """
        trained = self._trained_groups(self.active_blocks)
        return tuple(g for g in self.layer_map.group_names if g in trained)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters trained in the current period (what holds grads and optimizer state).

        Returns:
            the parameters of `trainable_groups()` that are in the optimizer.

        Example:
            >>> from lisa.memory import minimum_optimizer_state_bytes
            >>> from lisa.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=1))
            >>> lisa.begin_step()
            (3,)
            >>> minimum_optimizer_state_bytes(lisa.trainable_parameters())
            624176
        """
        trained = self._trained_groups(self.active_blocks)
        return [p for group, params in self._groups.items() if group in trained for p in params]

    def __repr__(self) -> str:
        return (
            f"Lisa(num_blocks={self.layer_map.num_blocks}, active_blocks={self.active_blocks}, "
            f"config={self.config})"
        )


def _uses_reentrant_checkpointing(model: nn.Module) -> bool:
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is not True:
            continue
        function = getattr(module, "_gradient_checkpointing_func", None)
        keywords = getattr(function, "keywords", None) or {}
        # torch.utils.checkpoint treats a missing use_reentrant as True.
        if keywords.get("use_reentrant") in (None, True):
            return True
    return False


def _state_nbytes(state: dict[str, Any]) -> int:
    return sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))


def _broadcast_from_rank_zero(active: tuple[int, ...]) -> tuple[int, ...]:
    """All ranks already draw the same set from the shared seed; rank 0's set is authoritative."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return active
    if distributed.get_world_size() == 1:
        return active
    payload = [list(active)]
    distributed.broadcast_object_list(payload, src=0)
    return tuple(int(i) for i in payload[0])
