"""CyclicSampler: gamma blocks at a time through ordered or reshuffled passes (as BAdam)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from lisa.samplers.base import _check_gamma, _check_generator, _check_num_blocks

__all__ = ["CYCLIC_ORDERS", "CyclicSampler"]

CyclicOrder = Literal["ascending", "descending", "random"]
CYCLIC_ORDERS: tuple[str, ...] = ("ascending", "descending", "random")


class CyclicSampler:
    """gamma blocks at a time through passes over all blocks (as BAdam orders its blocks).

    A pass visits every block once, in ascending or descending index order, or in a fresh random
    order per pass (``order="random"``). When gamma does not divide N, a draw that reaches the end
    of a pass takes the blocks left in it plus the first blocks of the next pass that it does not
    already hold; those are moved to the front of the next pass, so every pass still visits each
    block exactly once and every draw has exactly gamma distinct blocks. For ascending and
    descending orders this is plain wrap-around: N=5, gamma=2 gives (0, 1), (2, 3), (0, 4),
    (1, 2), (3, 4), ...

    Over one full cycle of lcm(N, gamma) / gamma draws each block is in lcm(N, gamma) / N of them,
    so ``inclusion_probabilities()`` is gamma / N for every block.

    Stateful: ``state_dict()`` holds the current pass order and the position in it (JSON-able);
    the random order draws each new pass from the generator given to ``sample``.

    Example:
        >>> sampler = CyclicSampler(num_blocks=5, gamma=2)
        >>> rng = np.random.default_rng(0)
        >>> [sampler.sample(rng) for _ in range(3)]
        [(0, 1), (2, 3), (0, 4)]
    """

    __slots__ = ("_gamma", "_num_blocks", "_order", "_pass_order", "_position")

    def __init__(self, num_blocks: int, gamma: int, order: CyclicOrder = "ascending") -> None:
        self._num_blocks = _check_num_blocks(num_blocks)
        self._gamma = _check_gamma(gamma, self._num_blocks)
        if order not in CYCLIC_ORDERS:
            raise ValueError(f"order={order!r} is not one of {CYCLIC_ORDERS}")
        self._order: str = order
        self._pass_order: list[int] = []  # the current pass; empty until the first draw
        self._position = 0  # how many blocks of the current pass were drawn

    @property
    def num_blocks(self) -> int:
        """N, the model's block count."""
        return self._num_blocks

    @property
    def gamma(self) -> int:
        """Blocks per draw."""
        return self._gamma

    @property
    def order(self) -> str:
        """ "ascending", "descending" or "random"."""
        return self._order

    def __repr__(self) -> str:
        return (
            f"CyclicSampler(num_blocks={self._num_blocks}, gamma={self._gamma}, "
            f"order={self._order!r})"
        )

    def _next_pass(self, rng: np.random.Generator, carried: list[int], needed: int) -> list[int]:
        if self._order == "ascending":
            fresh = list(range(self._num_blocks))
        elif self._order == "descending":
            fresh = list(range(self._num_blocks - 1, -1, -1))
        else:
            fresh = [int(i) for i in rng.permutation(self._num_blocks)]
        carried_set = set(carried)
        front = [b for b in fresh if b not in carried_set][:needed]
        front_set = set(front)
        return front + [b for b in fresh if b not in front_set]

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """The next gamma blocks of the current pass (wrapping into a new pass)."""
        _check_generator(rng)
        if self._gamma == 0:
            return ()
        taken = self._pass_order[self._position : self._position + self._gamma]
        self._position += len(taken)
        needed = self._gamma - len(taken)
        if needed:
            self._pass_order = self._next_pass(rng, taken, needed)
            taken = taken + self._pass_order[:needed]
            self._position = needed
        return tuple(sorted(taken))

    def inclusion_probabilities(self) -> np.ndarray:
        """gamma / N: each block's share of the draws over one full cycle."""
        return np.full(self._num_blocks, self._gamma / self._num_blocks)

    def spec(self) -> tuple[str, dict]:
        """The registered name and keyword arguments that rebuild this sampler (its position is
        in ``state_dict``, not here)."""
        return "cyclic", {"gamma": self._gamma, "order": self._order}

    def state_dict(self) -> dict[str, Any]:
        """The configuration, the current pass order and the position in it (JSON-able)."""
        return {
            "num_blocks": self._num_blocks,
            "gamma": self._gamma,
            "order": self._order,
            "permutation": list(self._pass_order),
            "position": self._position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from ``state_dict()``; refuses one made for another configuration."""
        if not isinstance(state, dict):
            raise ValueError(f"state={state!r} must be the dict returned by state_dict()")
        for key, mine in (
            ("num_blocks", self._num_blocks),
            ("gamma", self._gamma),
            ("order", self._order),
        ):
            if state.get(key) != mine:
                raise ValueError(
                    f"state {key}={state.get(key)!r} does not match this sampler's {key}={mine!r}; "
                    "load a state saved by a sampler with the same configuration"
                )
        permutation = [int(b) for b in state.get("permutation", [])]
        if permutation and sorted(permutation) != list(range(self._num_blocks)):
            raise ValueError(
                f"state permutation={permutation} is not a permutation of range({self._num_blocks})"
            )
        position = state.get("position")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ValueError(f"state position={position!r} must be an int")
        if not 0 <= position <= len(permutation):
            raise ValueError(
                f"state position={position} is outside [0, {len(permutation)}] for its permutation"
            )
        self._pass_order = permutation
        self._position = position
