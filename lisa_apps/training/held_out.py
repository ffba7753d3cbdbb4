"""Held-out loss during training: every N optimizer steps, on the run's (small) held-out set.

:class:`HeldOutCurve` scores :func:`lisa_apps.training.evaluation.evaluate_loss` at steps N, 2N,
... and keeps ``(step, eval_loss)`` points; :class:`HeldOutLossCallback` calls it from the
Trainer's ``on_step_end`` and the plain loop calls it after each step. Scoring runs under
``no_grad`` in eval mode and draws no random numbers, so the run trains exactly as without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import TrainerCallback

from lisa_apps.data import DataCollator
from lisa_apps.training.evaluation import evaluate_loss

__all__ = ["HeldOutCurve", "HeldOutLossCallback"]


class HeldOutCurve:
    """Held-out loss at every ``every``-th optimizer step; ``points`` holds what was scored.

    Example:
        >>> curve = HeldOutCurve([], None, every=5)
        >>> curve.due(10), curve.due(11)
        (True, False)
    """

    def __init__(
        self, features: Sequence[dict], collator: DataCollator | None, *, every: int,
        batch_size: int = 8,
    ) -> None:  # fmt: skip
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"eval_every={every!r} must be an integer >= 1 (steps between scores)")
        self.features, self.collator = features, collator
        self.every, self.batch_size = every, batch_size
        self.points: list[dict[str, float]] = []

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def step_end(self, model, step: int) -> None:
        """Score the held-out loss if ``step`` is due, then put the model back in train mode."""
        if not self.due(step):
            return
        loss = evaluate_loss(model, self.features, self.collator, batch_size=self.batch_size)
        model.train()
        self.points.append({"step": int(step), "eval_loss": float(loss)})


class HeldOutLossCallback(TrainerCallback):
    """The Trainer's side of :class:`HeldOutCurve`: score after each optimizer step."""

    def __init__(self, curve: HeldOutCurve) -> None:
        self.curve = curve

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.curve.step_end(model, state.global_step)
