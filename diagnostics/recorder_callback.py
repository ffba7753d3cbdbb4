"""NormRecorderCallback: a NormRecorder driven by a transformers Trainer.

Kept apart from diagnostics.recorder so that plain PyTorch loops never import transformers'
Trainer machinery.
"""

from __future__ import annotations

from transformers import TrainerCallback

from diagnostics.recorder import NormRecorder

__all__ = ["NormRecorderCallback"]


class NormRecorderCallback(TrainerCallback):
    """Record norms at step 0 (before training) and every ``recorder.every`` optimizer steps.

    Args:
        recorder: the NormRecorder to drive; its ``path`` (if any) is saved at the end.

    Example:
        >>> recorder = NormRecorder(kinds=("weight",), method="ft", path="out")  # doctest: +SKIP
        >>> trainer = Trainer(..., callbacks=[NormRecorderCallback(recorder)])  # doctest: +SKIP
    """

    def __init__(self, recorder: NormRecorder) -> None:
        self.recorder = recorder

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # Step 0 is the starting point of every norm trajectory (and of the delta reference).
        if model is not None and state.global_step == 0:
            self.recorder.record(0, model)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.recorder.should_record(state.global_step):
            self.recorder.record(state.global_step, model)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.recorder.path is not None and state.is_world_process_zero:
            self.recorder.save()
        return control
