"""The fine-tuning methods the benchmark compares, each a small class with one interface.

Every method owns its optimizer (torch AdamW, same hyperparameters everywhere) and tells the
workload which tensors it trains now, so the workload can compare the optimizer state held
with the least a stock AdamW needs for exactly those tensors:

    minimum = sum_{p trained now} (2 * numel(p) * itemsize(p) + 4)   # exp_avg, exp_avg_sq, step

Methods: full fine-tuning, LoRA (peft), LISA (lisa.engine, one state policy each), an
LMFlow-style callback (toggles requires_grad only, written from its documented behaviour),
BAdam (the `badam` package, random block order) and a static freeze of fixed blocks.
Not run on its own: bench.workload builds one of these per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn

from lisa.defaults import DEFAULT_LORA_RANK
from lisa.layers import LayerMap
from lisa.memory import minimum_optimizer_state_bytes, optimizer_state_bytes, tensor_bytes

if TYPE_CHECKING:
    from lisa.engine import Lisa

LEARNING_RATE = 1e-4
# Weight decay 0 so that AdamW does the same work on every method (BAdam splits decay groups).
WEIGHT_DECAY = 0.0


def make_adamw(parameters) -> torch.optim.AdamW:
    """The one optimizer every method uses (foreach/fused left to torch's per-device default)."""
    return torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


class Method(Protocol):
    """What the workload needs from a method."""

    name: str

    def prepare(self, model: nn.Module) -> nn.Module:
        """Set the method up on `model`; return the module to call (maybe a peft wrapper)."""
        ...

    def begin_step(self, step: int) -> None:
        """Called once before each step's forward pass (switching methods switch here)."""
        ...

    def step(self) -> None:
        """Apply the optimizer step."""
        ...

    def zero_grad(self) -> None:
        """Release grads (set to None) before the next backward."""
        ...

    def trained_tensors(self) -> list[torch.Tensor]:
        """Tensors the optimizer updates in the current step (their state is the minimum)."""
        ...

    def state_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose `.state` holds the method's state (for byte counts)."""
        ...

    def extra_bytes(self) -> int:
        """Bytes the method holds beyond params, grads and state (e.g. master copies)."""
        ...

    def active_blocks(self) -> tuple[int, ...] | None:
        """Blocks trained now, or None where the method trains all or none of them."""
        ...


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class _AdamWMethod:
    """Shared plumbing: one AdamW, grads set to None, trained = requires_grad tensors."""

    name: str
    optimizer: torch.optim.Optimizer | None = field(default=None, init=False)
    model: nn.Module | None = field(default=None, init=False)

    def begin_step(self, step: int) -> None:
        del step

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def trained_tensors(self) -> list[torch.Tensor]:
        return _trainable(self.model)

    def state_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer

    def extra_bytes(self) -> int:
        return 0

    def active_blocks(self) -> tuple[int, ...] | None:
        return None


@dataclass
class FullFineTune(_AdamWMethod):
    """Every parameter trains with AdamW."""

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = model
        self.optimizer = make_adamw(model.parameters())
        return model


@dataclass
class Lora(_AdamWMethod):
    """LoRA as every runner of the project applies it (diagnostics.lora.wrap_lora): every linear
    layer inside the blocks, alpha = 2 r, seeded; E and H frozen."""

    rank: int = DEFAULT_LORA_RANK
    seed: int = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        from diagnostics.lora import wrap_lora

        self.model = wrap_lora(model, rank=self.rank, seed=self.seed)
        self.optimizer = make_adamw(_trainable(self.model))
        return self.model


@dataclass
class LisaMethod(_AdamWMethod):
    """LISA through the project's engine: AdamW over all parameters, Lisa.begin_step per step."""

    gamma: int = 2
    interval: int = 5
    state_policy: str = "drop"
    seed: int = 0
    lisa: Lisa | None = field(default=None, init=False)

    def prepare(self, model: nn.Module) -> nn.Module:
        from lisa import Lisa, LisaConfig

        self.model = model
        self.optimizer = make_adamw(model.parameters())
        config = LisaConfig(
            gamma=self.gamma,
            interval=self.interval,
            seed=self.seed,
            state_policy=self.state_policy,
        )
        self.lisa = Lisa(model, self.optimizer, config)
        return model

    def begin_step(self, step: int) -> None:
        self.lisa.begin_step(step)

    def active_blocks(self) -> tuple[int, ...] | None:
        return tuple(self.lisa.active_blocks)


@dataclass
class LmflowStyle(_AdamWMethod):
    """LMFlow's callback as documented: every K steps freeze all blocks, unfreeze gamma random ones.

    Only requires_grad is toggled; optimizer state is never freed (the optimizer is built over
    every parameter first, i.e. with LMFlow issue 726 fixed). grads still go to None each step
    through zero_grad, as in transformers.Trainer.
    """

    gamma: int = 2
    interval: int = 5
    seed: int = 0
    layer_map: LayerMap | None = field(default=None, init=False)
    rng: np.random.Generator | None = field(default=None, init=False)
    current: tuple[int, ...] = field(default=(), init=False)

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = model
        self.optimizer = make_adamw(model.parameters())
        self.layer_map = LayerMap.from_model(model)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        return model

    def begin_step(self, step: int) -> None:
        if step % self.interval != 0:
            return
        num_blocks = self.layer_map.num_blocks
        chosen = self.rng.choice(num_blocks, size=self.gamma, replace=False)
        self.current = tuple(sorted(int(i) for i in chosen))
        for index in range(num_blocks):
            for _, p in self.layer_map.block_parameters(index):
                p.requires_grad_(index in self.current)

    def active_blocks(self) -> tuple[int, ...] | None:
        return self.current


@dataclass
class StaticFreeze(_AdamWMethod):
    """Hand-written floor for LISA's overhead: E, H, extras and fixed blocks train, nothing moves.

    AdamW is built over the trainable parameters only, after freezing.
    """

    blocks: tuple[int, ...] = ()

    def prepare(self, model: nn.Module) -> nn.Module:
        layer_map = LayerMap.from_model(model)
        for index in range(layer_map.num_blocks):
            for _, p in layer_map.block_parameters(index):
                p.requires_grad_(index in self.blocks)
        self.model = model
        self.optimizer = make_adamw(_trainable(model))
        return model

    def active_blocks(self) -> tuple[int, ...] | None:
        return tuple(self.blocks)


@dataclass
class BAdamMethod(_AdamWMethod):
    """BAdam's BlockOptimizer (random order), one block per period, E+H+extras always active.

    E, H and extras are passed as BAdam's always-active modules so that the trained set is
    LISA's with gamma = 1. BAdam clears all optimizer state at each switch and trains
    float32 master copies of the active parameters (extra_bytes counts them).
    """

    interval: int = 5
    seed: int = 0
    layer_map: LayerMap | None = field(default=None, init=False)

    def prepare(self, model: nn.Module) -> nn.Module:
        from badam import BlockOptimizer

        layer_map = LayerMap.from_model(model)
        # Full parameter names as BAdam's "prefixes": it matches by substring, and a bare
        # "layers.1" prefix would also match "layers.11".
        blocks = [
            [name for name, _ in layer_map.block_parameters(i)] for i in range(layer_map.num_blocks)
        ]
        always = [
            name
            for group in ("embed", "head", "extras")
            if group in layer_map.group_names
            for name, _ in layer_map.parameters(group)
        ]
        # BAdam draws its random block order from torch's global RNG.
        torch.manual_seed(self.seed)
        self.model = model
        self.optimizer = BlockOptimizer(
            base_optimizer=make_adamw(model.parameters()),
            named_parameters_list=list(model.named_parameters()),
            block_prefix_list=blocks,
            switch_block_every=self.interval,
            switch_mode="random",
            active_modules=always,
            verbose=0,
        )
        self.layer_map = layer_map
        return model

    def zero_grad(self) -> None:
        # BAdam moves grads to its master copies and clears them itself; the model's grads
        # are the ones to release here.
        self.model.zero_grad(set_to_none=True)

    def trained_tensors(self) -> list[torch.Tensor]:
        base = self.optimizer.base_optimizer
        return [p for group in base.param_groups for p in group["params"]]

    def state_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.base_optimizer

    def extra_bytes(self) -> int:
        # Master copies; with float32 weights .float() could alias, so count only new storages.
        model_storages = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        copies = [
            p
            for p in self.trained_tensors()
            if p.untyped_storage().data_ptr() not in model_storages
        ]
        return tensor_bytes(copies)

    def active_blocks(self) -> tuple[int, ...] | None:
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return tuple(
            i
            for i in range(self.layer_map.num_blocks)
            if any(n in names for n, _ in self.layer_map.block_parameters(i))
        )


def state_bytes(method: Method) -> int:
    """Optimizer state the method holds now (every storage counted once)."""
    return optimizer_state_bytes(method.state_optimizer())


def minimum_state_bytes(method: Method) -> int:
    """Least AdamW state for the tensors the method trains now (lisa.memory's formula)."""
    return minimum_optimizer_state_bytes(method.trained_tensors(), "adamw")


def build_method(
    name: str,
    *,
    gamma: int = 2,
    interval: int = 5,
    state_policy: str = "drop",
    rank: int = 8,
    blocks: tuple[int, ...] = (),
    seed: int = 0,
) -> Method:
    """Method by kind: "ft", "lora", "lisa", "lmflow", "badam" or "static".

    Example:
        >>> build_method("lisa", gamma=2, state_policy="drop").state_policy
        'drop'
    """
    label = name
    if name == "ft":
        return FullFineTune(label)
    if name == "lora":
        return Lora(label, rank=rank)
    if name == "lisa":
        return LisaMethod(
            label, gamma=gamma, interval=interval, state_policy=state_policy, seed=seed
        )
    if name == "lmflow":
        return LmflowStyle(label, gamma=gamma, interval=interval, seed=seed)
    if name == "badam":
        return BAdamMethod(label, interval=interval, seed=seed)
    if name == "static":
        return StaticFreeze(label, blocks=tuple(blocks))
    raise ValueError(f"method={name!r} is unknown; use ft, lora, lisa, lmflow, badam or static")
