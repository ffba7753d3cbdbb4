"""The LISA engine: which blocks train in each period, applied to a model and its optimizer.

Every `interval` optimizer steps the engine draws `gamma` of the model's N blocks with a
sampler, freezes everything else except the embedding (E), the LM head (H) and the "extras"
(final norm, ...), and applies a state policy to the optimizer (Pan et al. 2024,
arXiv 2403.17919, Algorithm 1; docs/design.md lists the rules enforced here).

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
from typing import Any

import numpy as np
import torch
from torch import nn

from lisa.config import LisaConfig
from lisa.distributed import check_model_wrapper, check_same_draw, unwrap_data_parallel
from lisa.layers import LayerMap
from lisa.memory import local_tensor
from lisa.optimizer_groups import managed_groups, resolve_layer_map
from lisa.sampler_checks import build_sampler, check_draw
from lisa.schedule import restore_schedule, schedule_state
from lisa.signature import check_layer_signature
from lisa.validation import is_int

__all__ = ["Lisa", "build_sampler"]

logger = logging.getLogger(__name__)


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

    Several processes (docs/scaling.md): give every rank the same config. Under FSDP2 build
    the engine on the sharded model (``lisa.distributed.shard_model``) and its optimizer; under
    DDP pass the DistributedDataParallel wrapper, built with ``find_unused_parameters=True``
    before the first ``begin_step``. DeepSpeed and FSDP1 are refused.

    Args:
        model: the model (plain, PEFT-wrapped, FSDP2-sharded or DDP-wrapped; only optimizer
            parameters are toggled).
        optimizer: any torch optimizer with per-parameter state (AdamW, SGD with momentum...).
        config: the LisaConfig.
        layer_map: a LayerMap of `model`; built with config.blocks_path when None.

    Example:
        >>> from lisa_apps.models import load_model
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
        check_model_wrapper(model, optimizer)
        # Under DDP the layer groups are those of the wrapped module (same parameters).
        self.layer_map = resolve_layer_map(unwrap_data_parallel(model), config, layer_map)
        if config.layer_signature is not None:
            check_layer_signature(self.layer_map, config.layer_signature, what="the LisaConfig")
        self.sampler = build_sampler(config, self.layer_map.num_blocks)
        self._groups = managed_groups(model, optimizer, self.layer_map, config)
        check_model_wrapper(model, optimizer, [p for ps in self._groups.values() for p in ps])
        if self.layer_map.tied and config.train_head and not config.train_embeddings:
            logger.warning(
                "the model ties its embedding and head: the shared matrix belongs to 'embed' "
                "and stays frozen with train_embeddings=False, so the head does not train"
            )
        if getattr(self.sampler, "gamma", None) == 0:
            logger.warning(
                "gamma=0: no block trains, only %s",
                ", ".join(g for g in ("embed", "head", "extras") if g in self._trained_groups(()))
                or "nothing (every group is switched off)",
            )
        self._rng = np.random.Generator(np.random.PCG64(config.seed))
        self.active_blocks: tuple[int, ...] = ()
        self.history: list[tuple[int, tuple[int, ...]]] = []
        self.freed_bytes_total = 0
        self.last_freed_bytes = 0
        self._period: int | None = None
        self._next_step = 0
        self._reapply_pending = False

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
        drawn = check_draw(self.sampler, self.sampler.sample(self._rng), self.layer_map.num_blocks)
        return check_same_draw(drawn)

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
                    freed += local_tensor(p.grad).nbytes
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
            >>> from lisa_apps.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> optimizer = torch.optim.AdamW(model.parameters())
            >>> lisa = Lisa(model, optimizer, LisaConfig(gamma=2, interval=2))
            >>> [lisa.begin_step() for _ in range(4)]  # a new draw every 2 steps
            [(2, 3), (2, 3), (0, 1), (0, 1)]
        """
        if step is None:
            step = self._next_step
        elif not is_int(step) or step < 0:
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
        in that case do we make the embedding output require grad (docs/design.md section 3,
        rule 7); the non-reentrant default needs nothing and keeps backward stopping at the
        lowest active block.
        """
        model = self.layer_map.model  # inside a DDP wrapper
        if self.config.train_embeddings or not _uses_reentrant_checkpointing(model):
            return
        if getattr(model, "_require_grads_hooks", None) or getattr(
            model, "_require_grads_hook", None
        ):
            return
        enable = getattr(model, "enable_input_require_grads", None)
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
            >>> from lisa_apps.models import load_model
            >>> model, _ = load_model("tiny-llama")
            >>> lisa = Lisa(model, torch.optim.AdamW(model.parameters()), LisaConfig(gamma=1))
            >>> lisa.begin_step()
            (3,)
            >>> sorted(json.loads(json.dumps(lisa.state_dict())))  # doctest: +NORMALIZE_WHITESPACE
            ['active_blocks', 'freed_bytes_total', 'history', 'interval', 'num_blocks',
             'period', 'rng', 'sampler', 'step', 'version']
        """
        return schedule_state(
            num_blocks=self.layer_map.num_blocks,
            interval=self.config.interval,
            step=self._next_step,
            period=self._period,
            active_blocks=self.active_blocks,
            rng=self._rng,
            sampler=self.sampler,
            history=self.history,
            freed_bytes_total=self.freed_bytes_total,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a schedule saved by `state_dict` (the next begin_step re-applies it).

        Args:
            state: the dict from `state_dict()` (possibly through JSON).

        Example:
            >>> import json
            >>> from lisa_apps.models import load_model
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
        restored = restore_schedule(
            state,
            num_blocks=self.layer_map.num_blocks,
            interval=self.config.interval,
            rng=self._rng,
            sampler=self.sampler,
        )
        self._next_step = restored.step
        self._period = restored.period
        self.active_blocks = restored.active_blocks
        self.history = restored.history
        self.freed_bytes_total = restored.freed_bytes_total
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
            >>> from lisa_apps.models import load_model
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
    # A DTensor's nbytes is the global size; this rank frees its local shard.
    return sum(local_tensor(v).nbytes for v in state.values() if isinstance(v, torch.Tensor))
