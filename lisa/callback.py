"""LisaCallback: LISA layer switching inside transformers.Trainer (and TRL's SFTTrainer).

The only lisa module that imports transformers' Trainer machinery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from lisa.config import LisaConfig
from lisa.engine import Lisa

__all__ = ["LisaCallback"]

logger = logging.getLogger(__name__)

ACTIVE_BLOCKS_KEY = "lisa_active_blocks"
FREED_BYTES_KEY = "lisa_freed_bytes"


class LisaCallback(TrainerCallback, ExportableState):
    """Run the LISA engine on the optimizer the Trainer builds.

    Nothing is frozen before training begins: the Trainer puts only requires_grad parameters
    into the optimizer it creates, so the engine is built on `on_train_begin` from the
    Trainer's own model and optimizer, and `on_step_begin` (once per optimizer step, also
    under gradient accumulation) calls `lisa.begin_step(state.global_step)`.

    Logs gain "lisa_active_blocks" (e.g. "3,17") and "lisa_freed_bytes" (bytes of grads and
    optimizer state freed by switches since the previous log). The schedule (step, active set,
    RNG and sampler state, history) is saved in every checkpoint's trainer_state.json under
    stateful_callbacks["LisaCallback"], and `resume_from_checkpoint` restores it exactly.

    Args:
        config: the LisaConfig (a dict of its fields is accepted, as a checkpoint stores it).

    Example:
        >>> import tempfile
        >>> from transformers import Trainer, TrainingArguments
        >>> from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
        >>> from lisa_apps.models import load_model
        >>> model, tokenizer = load_model("tiny-llama")
        >>> data = tokenize_examples(make_math_problems(4), tokenizer, max_length=384)
        >>> args = TrainingArguments(
        ...     output_dir=tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2,
        ...     report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
        >>> callback = LisaCallback(LisaConfig(gamma=2, interval=1))
        >>> trainer = Trainer(model, args, train_dataset=data,
        ...                   data_collator=DataCollator(tokenizer), callbacks=[callback])
        >>> trainer.train()  # doctest: +ELLIPSIS
        {'loss': ..., 'lisa_active_blocks': '2,3', 'lisa_freed_bytes': 0}
        {'loss': ..., 'lisa_active_blocks': '0,1', 'lisa_freed_bytes': ...}
        {'train_runtime': ..., 'lisa_active_blocks': '0,1', 'lisa_freed_bytes': 0}
        TrainOutput(global_step=2, ...)
        >>> callback.lisa.history
        [(0, (2, 3)), (1, (0, 1))]
    """

    def __init__(self, config: LisaConfig | Mapping[str, Any] | None) -> None:
        # A checkpoint stores the config as a dict (None when its sampler had no spec()); the
        # Trainer passes that back only with restore_callback_states_from_checkpoint=True.
        if config is None:
            raise ValueError(
                "LisaCallback needs a LisaConfig; this checkpoint holds none because its sampler "
                "could not be written as JSON (no spec()). Pass LisaCallback(LisaConfig(...)) "
                "and leave restore_callback_states_from_checkpoint=False (the default): "
                "LisaCallback restores its schedule from the checkpoint on its own"
            )
        if isinstance(config, Mapping):
            config = LisaConfig.from_dict(config)
        elif not isinstance(config, LisaConfig):
            raise TypeError(f"config must be a LisaConfig, got {type(config).__name__}")
        self.config = config
        self.lisa: Lisa | None = None
        self._freed_at_last_log = 0

    # checkpoint state (transformers' ExportableState) ----------------------------------------

    def state(self) -> dict:
        """Callback state for trainer_state.json: config (if JSON-able) and the schedule."""
        try:
            config = self.config.to_dict()
        except ValueError:  # a custom sampler instance without spec(): the schedule still saves
            config = None
        return {
            "args": {"config": config},
            "attributes": {"lisa_state": None if self.lisa is None else self.lisa.state_dict()},
        }

    # events ----------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _check_parallel_arguments(args, model)
        self._build(model, optimizer)
        saved = _saved_lisa_state(state)
        if state.global_step > 0:
            if saved is None:
                logger.warning(
                    "resuming at step %d from a checkpoint without LISA state: starting a new "
                    "schedule at this step",
                    state.global_step,
                )
            else:
                self.lisa.load_state_dict(saved)
        self._freed_at_last_log = self.lisa.freed_bytes_total

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.lisa is None:
            # A Trainer subclass that skipped on_train_begin: build on the first step instead.
            self._build(model, optimizer)
        self.lisa.begin_step(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.lisa is None or logs is None:
            return
        extra = {
            ACTIVE_BLOCKS_KEY: ",".join(str(i) for i in self.lisa.active_blocks),
            FREED_BYTES_KEY: self.lisa.freed_bytes_total - self._freed_at_last_log,
        }
        self._freed_at_last_log = self.lisa.freed_bytes_total
        logs.update(extra)
        # Trainer.log copies `logs` into log_history before callbacks see it.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    # helpers ---------------------------------------------------------------------------------

    def _build(self, model, optimizer) -> None:
        if model is None or optimizer is None:
            raise ValueError(
                "LisaCallback needs the Trainer's model and optimizer; add it to a "
                "transformers.Trainer through callbacks=[LisaCallback(config)]"
            )
        self.lisa = Lisa(model, optimizer, self.config)


def _check_parallel_arguments(args, model) -> None:
    """Refuse DeepSpeed, and DDP without find_unused_parameters (frozen blocks have no grad).

    The Trainer wraps the model after callbacks are built and hands them the unwrapped model,
    so the settings are read from the TrainingArguments, resolved as the Trainer resolves them.
    """
    if getattr(args, "deepspeed", None) or getattr(args, "hf_deepspeed_config", None):
        raise ValueError(
            "LISA does not support DeepSpeed: ZeRO partitions and flattens parameters, so LISA "
            "cannot freeze blocks one by one or free their optimizer state. Use FSDP2: "
            "TrainingArguments(fsdp='full_shard', fsdp_config={'fsdp_version': 2}) on GPUs, "
            "or lisa.distributed.shard_model in a plain loop; see docs/scaling.md"
        )
    # FSDP comes from TrainingArguments(fsdp=...) or from an accelerate config (accelerate
    # launch sets ACCELERATE_USE_FSDP); accelerate ignores it on the CPU and may run DDP there.
    fsdp = (
        getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    )
    if getattr(args, "world_size", 1) <= 1 or (fsdp and not args.use_cpu):
        return  # one process, or FSDP: no DDP wrapper, so nothing to find unused
    find_unused = args.ddp_find_unused_parameters
    if find_unused is None:  # the Trainer's default: off with activation checkpointing
        checkpointing = getattr(model, "is_activation_checkpointing", False) or getattr(
            args, "activation_checkpointing", False
        )
        find_unused = not checkpointing
    if not find_unused:
        raise ValueError(
            "DDP with LISA needs find_unused_parameters (frozen blocks produce no gradient); "
            "pass TrainingArguments(ddp_find_unused_parameters=True), which also works with "
            "non-reentrant activation checkpointing"
        )


def _saved_lisa_state(state) -> dict | None:
    saved = (state.stateful_callbacks or {}).get(LisaCallback.__name__)
    if isinstance(saved, list):
        if len(saved) > 1:
            raise ValueError(
                "the checkpoint holds several LisaCallback states; use one LisaCallback"
            )
        saved = saved[0] if saved else None
    if not isinstance(saved, dict):
        return None
    return saved.get("attributes", {}).get("lisa_state")
