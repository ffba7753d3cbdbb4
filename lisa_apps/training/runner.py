"""Fine-tune one method (LISA, LoRA or full FT) through transformers.Trainer and score it.

:func:`finetune` is the runner behind ``lisa train``, ``lisa demo``, ``lisa study`` and the
examples. It evaluates held-out loss (token-weighted mean over response tokens) and exact-match
answer accuracy (greedy generation, final number parsed with
:func:`lisa_apps.data.extract_answer`) before and after training, and, given an output folder,
writes ``metrics.json``, ``log_history.csv``, ``predictions_{before,after}.csv``,
``active_sets.json`` (LISA), ``loss_curve.png`` and, when asked, the trained ``model/``.

Under torchrun (``FinetuneConfig.distributed``), ``"ddp"`` trains with the Trainer and
DistributedDataParallel, and ``"fsdp2"`` with the plain loop of :mod:`lisa_apps.training.loop`
on a model sharded by :func:`lisa.distributed.shard_model`; rank 0 alone writes the files.

The three methods share everything but what trains, so runs on the same examples, seed and
step budget compare: LISA trains the embedding, head and ``gamma`` sampled blocks (switching
every ``interval`` steps, through :class:`lisa.callback.LisaCallback`); LoRA adds rank-``r``
adapters to every linear layer of the blocks (:func:`diagnostics.lora.wrap_lora`); FT trains
every parameter.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from diagnostics.files import library_versions
from diagnostics.lora import wrap_lora
from diagnostics.runtime import PeakMemory, check_precision, prepare_model, resolve_device
from lisa.distributed import reshard_model, shard_model
from lisa.memory import optimizer_state_bytes
from lisa_apps.data import DataCollator, pack_features
from lisa_apps.outputs import RunFolder
from lisa_apps.sharded_load import load_shards, on_meta
from lisa_apps.training.config import FinetuneConfig, TokenizedData
from lisa_apps.training.distributed import (
    gather_from_ranks,
    rank_and_world,
    rank_device,
)
from lisa_apps.training.evaluation import evaluate
from lisa_apps.training.loop import (
    LoopRun,
    optimizer_parameter_groups,
    save_full_model,
    sharding_options,
    train_loop,
)
from lisa_apps.training.results import FinetuneResult, trainable_parameters, write_run
from lisa_apps.training.tracking import TENSORBOARD_FOLDER

__all__ = ["FinetuneResult", "finetune", "resolve_precision"]

logger = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16-mixed on a CUDA device with bfloat16, else float32; others checked.

    Example:
        >>> resolve_precision("auto", torch.device("cpu"))
        'float32'
    """
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if cuda_bf16 else "float32"
    return check_precision(precision, device)


def finetune(
    model,
    tokenizer,
    train_examples: Sequence[dict],
    eval_examples: Sequence[dict],
    config: FinetuneConfig | None = None,
    *,
    out_dir: str | os.PathLike | RunFolder | None = None,
    overwrite: bool = False,
    save_model: bool = False,
    progress: bool = True,
    evaluate_before: bool = True,
    resume_from: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    merge_lora: bool = False,
    eval_every: int | None = None,
    features: TokenizedData | None = None,
) -> FinetuneResult:
    """Train one method on ``train_examples`` and score held-out loss and accuracy around it.

    The model is trained in place (LoRA wraps it with peft first). Evaluation: token-weighted
    mean cross-entropy over the response tokens of ``eval_examples``, and the fraction of those
    with an ``"answer"`` whose greedy generation parses to the same number. Each file is
    written as soon as what it holds exists: the trained model right after training, before
    the final evaluation, so an interruption there keeps it.

    Args:
        model: a causal LM (e.g. from :func:`lisa_apps.models.load_model`).
        tokenizer: its tokenizer, with a chat template and a pad token.
        train_examples: examples (``instruction``, ``input``, ``output``), e.g. from
            :func:`lisa_apps.data.load_examples`.
        eval_examples: held-out examples; those with an ``answer`` count for accuracy.
        config: the run settings; defaults to ``FinetuneConfig()`` (LISA, 60 steps).
        out_dir: folder for the run's files (see :class:`lisa_apps.outputs.RunFolder`: an
            earlier run's folder is refused unless ``overwrite``); ``None`` writes nothing.
        overwrite: replace an earlier run's results in ``out_dir``.
        save_model: also save the trained model (LoRA: its adapters) and tokenizer in
            ``out_dir/model``.
        progress: show tqdm progress bars (the Trainer's, and one for generation).
        evaluate_before: also score the model before training (skip to save time).
        resume_from: a ``checkpoint-N`` folder of an earlier run with the same settings
            (``config.save_steps``): training continues from its step with its weights,
            optimizer, schedule, RNG states, data position and LISA schedule (see
            :mod:`lisa_apps.training.checkpoints`).
        checkpoint_dir: where ``checkpoint-N`` folders go; default ``out_dir`` (under DDP every
            rank passes it, rank 0 alone passes ``out_dir``).
        merge_lora: LoRA: merge the adapters into the weights before saving (peft
            ``merge_and_unload``), so ``out_dir/model`` is a plain model.
        eval_every: also score the held-out loss every this many optimizer steps during
            training (:class:`lisa_apps.training.held_out.HeldOutCurve`); the points go into
            ``metrics["eval_curve"]`` as ``{"step", "eval_loss"}``.
        features: ``train_examples`` and ``eval_examples`` already tokenised with this
            config's length rule and this tokenizer (:class:`TokenizedData`), used instead of
            tokenising them again: a caller that trains many runs on the same data tokenises
            once. ``eval_examples`` still give the problems whose answers are scored.

    Returns:
        A :class:`FinetuneResult`.

    Example:
        >>> from lisa_apps.models import load_model
        >>> from lisa_apps.data import make_math_problems
        >>> model, tokenizer = load_model("tiny-llama")
        >>> result = finetune(model, tokenizer, make_math_problems(8), make_math_problems(2, split="test"),
        ...                   FinetuneConfig(method="lisa", steps=2, max_length=384), progress=False)
        >>> sorted(result.metrics["after"])
        ['accuracy', 'eval_loss', 'num_scored']
    """
    config = config or FinetuneConfig()
    _, world = rank_and_world()
    if config.distributed is not None and not _in_process_group():
        raise ValueError(
            f"distributed={config.distributed!r} needs an initialised process group: start the "
            "run with torchrun and call lisa_apps.training.distributed.setup_process_group first"
        )
    device = resolve_device(config.device)
    if config.distributed is not None:
        device = rank_device(device)
    elif device.type == "cuda" and device.index not in (None, 0):
        raise ValueError(
            f"device={config.device!r}: the Trainer uses the first visible CUDA device; select "
            "another with CUDA_VISIBLE_DEVICES"
        )
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} (the global batch) is not a multiple of the "
            f"{world} ranks"
        )
    precision = resolve_precision(config.precision, device)
    folder = _run_folder(out_dir, overwrite, config)
    if features is None:
        features = TokenizedData.tokenize(
            train_examples, eval_examples, tokenizer, max_length=config.max_length,
            drop_long=config.drop_long,
        )  # fmt: skip
    else:
        features.check(config, tokenizer)
    train_features, eval_features = list(features.train), list(features.held_out)
    if config.packing:
        train_features = pack_features(train_features, config.max_length)
        # transformers separates packed examples only without a KV cache (lisa_apps.data.packing).
        model.config.use_cache = False
    if not train_features:
        raise ValueError("no training examples; pass at least one")
    steps = config.training_steps(len(train_features))
    if merge_lora and config.method != "lora":
        raise ValueError(f"merge_lora applies to method='lora' only, not {config.method!r}")
    if checkpoint_dir is None and folder is not None:
        checkpoint_dir = folder.path
    if config.save_steps is not None and checkpoint_dir is None:
        raise ValueError(
            f"save_steps={config.save_steps} needs a folder for the checkpoints; pass out_dir"
        )
    # FSDP2 moves each unit's shard to the device as it shards (1/W of the model per rank, one
    # unit at a time), so a sharded run keeps the full model on the CPU until then.
    sharded = config.distributed == "fsdp2" and world > 1
    # A model from lisa_apps.sharded_load.empty_model has no weights yet: each rank reads its
    # shards from the checkpoint once sharded, so no rank ever holds the whole model.
    empty = on_meta(model)
    if empty and (not sharded or config.method == "lora"):
        raise ValueError(
            "the model's parameters are on the meta device; load it with load_model, or with "
            "lisa_apps.sharded_load.empty_model only for FT or LISA under distributed='fsdp2' "
            "on several ranks"
        )
    prepare_model(
        model,
        # device None: an empty model is only cast (its buffers, as a loaded model's would be).
        device=None if empty else torch.device("cpu") if sharded else device,
        precision=precision,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    callbacks: list = []
    if sharded:
        model, callbacks = _prepare_method(model, config)
        model = shard_model(model, **sharding_options(config, device))
        if empty:  # offloaded shards live in CPU memory
            load_shards(model, torch.device("cpu") if config.offload else device)

    predictions: dict[str, pd.DataFrame] = {}
    metrics: dict[str, Any] = {
        "method": config.method,
        "model": _model_name(model),
        "settings": config.to_dict() | {"device": str(device), "precision": precision},
        "num_train_examples": len(train_features),
        "num_eval_examples": len(eval_examples),
        "device": str(device),
        "precision": precision,
    }
    if folder is not None and folder.status == "new":
        folder.open()
    try:
        if evaluate_before:
            metrics["before"], predictions["before"] = evaluate(
                model, tokenizer, eval_examples, eval_features, config, progress=progress,
                label="before",
            )  # fmt: skip
            reshard_model(model)  # FSDP2 left its root unit gathered after that forward

        if not sharded:
            model, callbacks = _prepare_method(model, config)
        metrics["trainable_parameters"] = trainable_parameters(model, config)
        collator = DataCollator(tokenizer)
        curve = None
        if eval_every is not None:
            from lisa_apps.training.held_out import HeldOutCurve, HeldOutLossCallback

            curve = HeldOutCurve(
                eval_features, collator, every=eval_every, batch_size=config.eval_batch_size
            )
            callbacks = [*callbacks, HeldOutLossCallback(curve)]
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            if config.distributed == "fsdp2":
                writer = None
                if rank_and_world()[0] == 0:  # rank 0 reports, as the Trainer's integrations do
                    from lisa_apps.training.tracking import open_writer

                    writer = open_writer(config.report_to, folder, metrics["settings"])
                try:
                    run = train_loop(
                        model, train_features, collator, config, device=device,
                        precision=precision, progress=progress, writer=writer, held_out=curve,
                        checkpoint_dir=checkpoint_dir, resume_from=resume_from, folder=folder,
                    )  # fmt: skip
                finally:
                    if writer is not None:
                        writer.close()
            else:
                run = _train_with_trainer(
                    model, callbacks, train_features, collator, config, device, precision,
                    progress, world, folder=folder, checkpoint_dir=checkpoint_dir,
                    resume_from=resume_from,
                )  # fmt: skip
            elapsed = time.perf_counter() - start
        model, log_history = run.model, run.log_history
        model.eval()

        losses = log_history["loss"].dropna() if "loss" in log_history else pd.Series(dtype=float)
        state_bytes = optimizer_state_bytes(run.optimizer)
        metrics.update(
            {
                "train_loss_mean": run.training_loss,
                "train_loss_first": float(losses.iloc[0]) if len(losses) else None,
                "train_loss_last": float(losses.iloc[-1]) if len(losses) else None,
                "train_runtime_s": round(elapsed, 3),
                "steps": steps,
                # A resumed run times only the steps it took.
                "seconds_per_step": round(elapsed / max(steps - run.first_step, 1), 4),
                # Measured on the optimizer that trained, after the last step (this rank's).
                "optimizer_state_bytes": state_bytes,
                "peak_memory_bytes": peak.peak_bytes,
                "peak_memory_measure": peak.measure,
                "versions": library_versions(),
            }
        )
        if curve is not None:
            metrics["eval_curve"] = curve.points
        if resume_from is not None:
            metrics["resumed_from"] = str(resume_from)
            metrics["resumed_at_step"] = run.first_step
        if config.distributed is not None:
            # Every rank's own figures; under FSDP2 each holds its shards only.
            metrics["world_size"] = world
            metrics["peak_memory_bytes_per_rank"] = gather_from_ranks(peak.peak_bytes)
            metrics["optimizer_state_bytes_per_rank"] = gather_from_ranks(state_bytes)
            logger.info(
                "rank %d: peak memory %.0f MiB (%s), optimizer state %.1f MiB",
                rank_and_world()[0], peak.peak_bytes / 2**20, peak.measure, state_bytes / 2**20,
            )  # fmt: skip
        active_history: list[tuple[int, tuple[int, ...]]] = []
        if config.method == "lisa":
            lisa = run.lisa
            active_history = [
                (int(step), tuple(int(b) for b in blocks)) for step, blocks in lisa.history
            ]
            metrics["num_blocks"] = lisa.layer_map.num_blocks
            metrics["num_switches"] = len(active_history)
        if save_model:
            # Under FSDP2 every rank takes part in gathering the weights; rank 0 writes.
            target = folder.file("model") if folder is not None else None
            if config.distributed == "fsdp2":
                save_full_model(model, tokenizer, target)
            elif target is not None:
                extra = {}
                if merge_lora and config.method == "lora":
                    # The merged model computes what the adapted one did; evaluation goes on with it.
                    model = model.merge_and_unload()
                elif config.method == "lora":
                    # The adapters never include the embedding; without this peft looks the base
                    # model's config up on the hub to decide.
                    extra["save_embedding_layers"] = False
                model.save_pretrained(target, safe_serialization=True, **extra)
                tokenizer.save_pretrained(target)  # with its chat template
        metrics["after"], predictions["after"] = evaluate(
            model, tokenizer, eval_examples, eval_features, config, progress=progress,
            label="after",
        )  # fmt: skip
        result = FinetuneResult(model, metrics, log_history, active_history, predictions)
        if folder is not None:
            write_run(result, folder)
            result.out_dir, result.files = folder.target, list(folder.written)
    except KeyboardInterrupt:
        if folder is not None and out_dir is not folder:
            folder.close("interrupted")
        raise
    except BaseException:
        if folder is not None and out_dir is not folder:
            folder.close("failed")
        raise
    if folder is not None and out_dir is not folder:
        folder.close("finished")
    return result


def _in_process_group() -> bool:
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized()


def _train_with_trainer(
    model, callbacks, train_features, collator, config, device, precision, progress, world, *,
    folder=None, checkpoint_dir=None, resume_from=None,
) -> LoopRun:
    """One run of transformers.Trainer (DDP under torchrun); the same fields as the loop's."""
    from transformers import Trainer, TrainingArguments

    from lisa_apps.training.checkpoints import RecordCheckpoints, checkpoint_step

    saving = config.save_steps is not None
    # Read before training: the Trainer may delete that checkpoint once it has newer ones.
    first_step = 0 if resume_from is None else checkpoint_step(resume_from)
    length = (
        {"max_steps": config.steps}
        if config.epochs is None
        else {"max_steps": -1, "num_train_epochs": float(config.epochs)}
    )
    # transformers 5 reads a warm-up below 1 as a ratio of the steps (ceil(steps * ratio)).
    warmup = config.warmup_ratio if config.warmup_ratio else config.warmup_steps
    extra_callbacks = []
    report_to = [target for target in config.report_to if target != "tensorboard"]
    if "tensorboard" in config.report_to and folder is not None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # Its own writer into the run folder (transformers 5 has no logging_dir); the callback
        # closes it at the end of training.
        writer = SummaryWriter(str(folder.file(TENSORBOARD_FOLDER)))
        extra_callbacks.append(TensorBoardCallback(tb_writer=writer))
    if saving and folder is not None:
        extra_callbacks.append(RecordCheckpoints(folder))
    with tempfile.TemporaryDirectory(prefix="lisa-trainer-") as scratch:
        args = TrainingArguments(
            # checkpoint-N folders go into the run folder; without them nothing is saved.
            output_dir=str(checkpoint_dir) if saving else scratch,
            **length,
            per_device_train_batch_size=config.batch_size // world,
            gradient_accumulation_steps=config.grad_accum,
            learning_rate=config.resolved_learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=warmup,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            optim="adamw_torch",
            logging_steps=1,
            save_strategy="steps" if saving else "no",
            save_steps=config.save_steps if saving else 500,
            save_total_limit=config.save_total_limit,
            report_to=report_to,
            use_cpu=device.type == "cpu",
            bf16=precision == "bf16-mixed",
            **_checkpointing_arguments(config.gradient_checkpointing),
            # LISA's frozen blocks produce no grad: DDP must expect unused parameters.
            ddp_find_unused_parameters=config.method == "lisa" if world > 1 else None,
            seed=config.seed,
            data_seed=config.seed,
            disable_tqdm=not progress,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        optimizers = (None, None)
        if config.group_settings:
            # A rate per group: the Trainer's own optimizer class and settings over our groups;
            # the Trainer still builds the scheduler, which scales every group alike.
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
            groups = optimizer_parameter_groups(model, config)
            optimizers = (optimizer_cls(groups, **optimizer_kwargs), None)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_features,
            data_collator=collator,
            callbacks=[*callbacks, *extra_callbacks],
            optimizers=optimizers,
        )
        for callback in callbacks:
            # LISA's keys join a log entry in on_log; the reporting integrations must see them.
            trainer.callback_handler.remove_callback(callback)
            trainer.callback_handler.callbacks.insert(0, callback)
        _replace_progress_reporting(trainer, progress)
        if "wandb" in config.report_to:
            import wandb

            callers_run = wandb.run  # a run the caller opened is theirs to finish
        train_output = trainer.train(
            resume_from_checkpoint=None if resume_from is None else str(resume_from)
        )
        if "wandb" in config.report_to and wandb.run is not None and wandb.run is not callers_run:
            # WandbCallback leaves the run it started open; finish it so that the next
            # finetune call starts its own run, as the FSDP2 loop's WandbWriter does.
            wandb.run.finish()
    lisa = callbacks[0].lisa if config.method == "lisa" else None
    history = pd.DataFrame(trainer.state.log_history)
    return LoopRun(
        model,
        history,
        float(train_output.training_loss),
        trainer.optimizer,
        lisa,
        first_step=first_step,
    )


def _run_folder(out_dir, overwrite: bool, config: FinetuneConfig) -> RunFolder | None:
    if out_dir is None or isinstance(out_dir, RunFolder):
        return out_dir
    return RunFolder(
        out_dir, command="lisa_apps.training.finetune", arguments=config.to_dict(),
        overwrite=overwrite,
    ).check()  # fmt: skip


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """TrainingArguments for non-reentrant activation checkpointing, under the name this
    transformers version uses (transformers 5 renamed gradient_ to activation_checkpointing)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{prefix}_checkpointing": enabled, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}


def _replace_progress_reporting(trainer, progress: bool) -> None:
    """One tqdm bar with the latest loss in its postfix, instead of a printed dict per step."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LossProgressCallback(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(LossProgressCallback())


def _prepare_method(model, config: FinetuneConfig):
    """Set what trains and return (model, callbacks); LoRA wraps the model with peft."""
    if config.method == "lora":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        wrapped = wrap_lora(
            model,
            rank=config.lora_rank,
            alpha=config.resolved_lora_alpha,
            dropout=config.lora_dropout,
            seed=config.seed,
        )
        if config.gradient_checkpointing:
            # The frozen embedding's output needs grad for checkpointed blocks to backpropagate.
            wrapped.enable_input_require_grads()
        return wrapped, []
    for parameter in model.parameters():
        # LISA too: the Trainer's optimizer must hold every parameter before the first freeze.
        parameter.requires_grad_(True)
    if config.method == "lisa":
        from lisa.callback import LisaCallback  # the Trainer machinery, only when used

        return model, [LisaCallback(config.resolved_lisa)]
    return model, []


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or ""
    return name or type(model).__name__
