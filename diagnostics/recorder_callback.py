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
        >>> import os, tempfile
        >>> from transformers import Trainer, TrainingArguments
        >>> from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
        >>> from lisa_apps.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> data = tokenize_examples(make_math_problems(4), tokenizer, max_length=384)
        >>> out = tempfile.mkdtemp()
        >>> args = TrainingArguments(
        ...     output_dir=out, max_steps=2, per_device_train_batch_size=2, report_to=[],
        ...     use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
        >>> recorder = NormRecorder(kinds=("weight",), method="ft", path=out)
        >>> trainer = Trainer(model, args, train_dataset=data,
        ...                   data_collator=DataCollator(tokenizer),
        ...                   callbacks=[NormRecorderCallback(recorder)])
        >>> trainer.train()  # doctest: +ELLIPSIS
        {'loss': ...}
        TrainOutput(global_step=2, ...)
        >>> recorder.table["step"].unique().tolist()
        [0, 1, 2]
        >>> sorted(name for name in os.listdir(out) if name.startswith("norms"))
        ['norms.csv', 'norms.json']
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
