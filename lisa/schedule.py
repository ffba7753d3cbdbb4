"""The engine's switching schedule as checkpoint state: JSON-able, versioned, checked on load.

A resumed run draws what the uninterrupted run would have only if the checkpoint holds the
whole schedule: step, period, active set, the generator's and the sampler's state, the history
(docs/design.md section 3, rule 3). :meth:`lisa.Lisa.state_dict` and
:meth:`lisa.Lisa.load_state_dict` are built on the two functions here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from lisa.samplers import Sampler

__all__ = ["STATE_VERSION", "RestoredSchedule", "restore_schedule", "schedule_state"]

# Bumped when the keys or their meaning change; an older state is refused, not guessed at.
STATE_VERSION = 1


class RestoredSchedule(NamedTuple):
    """A checked schedule, read back from :func:`schedule_state`'s dict."""

    step: int  # the next optimizer step (steps already taken)
    period: int | None  # period of the active set; None before the first draw
    active_blocks: tuple[int, ...]
    history: list[tuple[int, tuple[int, ...]]]  # (step, active_blocks) of every draw
    freed_bytes_total: int


def schedule_state(
    *,
    num_blocks: int,
    interval: int,
    step: int,
    period: int | None,
    active_blocks: Iterable[int],
    rng: np.random.Generator,
    sampler: Sampler,
    history: Iterable[tuple[int, Iterable[int]]],
    freed_bytes_total: int,
) -> dict[str, Any]:
    """The JSON-able dict of a schedule; ``num_blocks`` and ``interval`` are kept to check a load.

    Example:
        >>> from lisa.samplers import make_sampler
        >>> rng = np.random.Generator(np.random.PCG64(0))
        >>> state = schedule_state(
        ...     num_blocks=4, interval=2, step=1, period=0, active_blocks=(1,), rng=rng,
        ...     sampler=make_sampler("uniform", 4, gamma=1), history=[(0, (1,))],
        ...     freed_bytes_total=0,
        ... )
        >>> state["history"], state["sampler"]
        ([[0, [1]]], None)
    """
    sampler_state = None
    if callable(getattr(sampler, "state_dict", None)):
        sampler_state = sampler.state_dict()
    return {
        "version": STATE_VERSION,
        "num_blocks": num_blocks,
        "interval": interval,
        "step": step,
        "period": period,
        "active_blocks": list(active_blocks),
        "rng": rng.bit_generator.state,
        "sampler": sampler_state,
        "history": [[step, list(blocks)] for step, blocks in history],
        "freed_bytes_total": freed_bytes_total,
    }


def restore_schedule(
    state: dict[str, Any],
    *,
    num_blocks: int,
    interval: int,
    rng: np.random.Generator,
    sampler: Sampler,
) -> RestoredSchedule:
    """Check a saved schedule against this engine, restore ``rng`` and ``sampler`` in place.

    Args:
        state: a dict from :func:`schedule_state` (possibly through JSON).
        num_blocks, interval: this engine's; a state saved for others is refused.
        rng, sampler: this engine's generator and sampler, whose state is set from ``state``.

    Returns:
        The rest of the schedule, as plain ints and tuples.

    Raises:
        ValueError: a state of another version, model, interval, generator or sampler.
    """
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"LISA state version {state.get('version')!r} is not {STATE_VERSION}; "
            "it was written by another version of lisa"
        )
    if state["num_blocks"] != num_blocks:
        raise ValueError(
            f"the saved LISA state is for {state['num_blocks']} blocks but this model has "
            f"{num_blocks}; load it onto the model it was saved from"
        )
    if state["interval"] != interval:
        raise ValueError(
            f"the saved LISA state used interval={state['interval']} but the config has "
            f"interval={interval}; resume with the same LisaConfig"
        )
    if state["rng"].get("bit_generator") != "PCG64":
        raise ValueError(f"unexpected bit generator in LISA state: {state['rng']!r}")
    rng.bit_generator.state = state["rng"]
    if state["sampler"] is not None:
        if not callable(getattr(sampler, "load_state_dict", None)):
            raise ValueError(
                "the saved LISA state has sampler state but this sampler is stateless; "
                "resume with the same sampler"
            )
        sampler.load_state_dict(state["sampler"])
    return RestoredSchedule(
        step=int(state["step"]),
        period=None if state["period"] is None else int(state["period"]),
        active_blocks=tuple(int(i) for i in state["active_blocks"]),
        history=[(int(step), tuple(int(i) for i in blocks)) for step, blocks in state["history"]],
        freed_bytes_total=int(state["freed_bytes_total"]),
    )
