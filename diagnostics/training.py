"""Fine-tune one method (LISA, LoRA or full FT) through transformers.Trainer and score it.

:func:`finetune` is the runner behind ``lisa train`` and the examples. It evaluates held-out
loss (token-weighted mean over response tokens) and exact-match answer accuracy (greedy
generation, final number parsed with :func:`lisa.data.extract_answer`) before and after
training, and writes ``metrics.json``, ``log_history.csv``, ``predictions_{before,after}.csv``,
``active_sets.json`` (LISA) and ``loss_curve.png`` when given an output folder.

The three methods share everything but what trains, so runs on the same examples, seed and
step budget compare: LISA trains the embedding, head and ``gamma`` sampled blocks (switching
every ``interval`` steps, through :class:`lisa.callback.LisaCallback`); LoRA adds rank-``r``
adapters to every linear layer of the blocks (peft); FT trains every parameter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diagnostics.files import atomic_write_text, library_versions
from diagnostics.probes import wrap_lora
from lisa.data import (
    IGNORE_INDEX,
    DataCollator,
    extract_answer,
    normalize_number,
    prompt_text,
    tokenize_examples,
)
from lisa.memory import optimizer_state_bytes
from lisa.switching import LisaConfig

logger = logging.getLogger(__name__)

METHODS = ("lisa", "lora", "ft")
# Chosen by the sweep in docs/training-defaults.md (SmolLM2-135M, maths SFT, batch 4).
DEFAULT_LEARNING_RATES = {"lisa": 4e-4, "lora": 1e-3, "ft": 5e-5}
# LISA's defaults for short runs: K=5 gives a 60-step budget twelve draws instead of three.
DEFAULT_LISA_GAMMA = 2
DEFAULT_LISA_INTERVAL = 5
PREDICTION_COLUMNS = ("instruction", "answer", "generated", "predicted", "correct")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; every method reads the same fields, so runs compare.

    Args:
        method: ``"lisa"``, ``"lora"`` or ``"ft"``.
        steps: optimizer steps (the budget).
        learning_rate: AdamW learning rate; ``None`` takes ``DEFAULT_LEARNING_RATES[method]``.
        batch_size: training examples per step.
        max_length: longest tokenised example (see :func:`lisa.data.tokenize_examples`).
        seed: seed for data order, LoRA init and the LISA schedule (unless ``lisa`` sets one).
        lr_scheduler: a transformers scheduler name; ``"constant"`` keeps short runs comparable.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        lora_rank: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator (update = alpha / r * B @ A); ``None`` means ``2 * r``.
        lora_dropout: dropout on the LoRA input.
        lisa: the LISA settings; ``None`` means gamma 2, interval 5, uniform, this ``seed``.
        eval_batch_size: batch size for held-out loss and generation.
        max_new_tokens: generation budget per answer (the worked solutions need ~60 tokens).
        score_accuracy: generate answers and score exact match; ``False`` measures held-out
            loss only (generation dominates evaluation time on a CPU), accuracy is then None.

    Example:
        >>> FinetuneConfig(method="ft", steps=10).resolved_learning_rate
        5e-05
    """

    method: str = "lisa"
    steps: int = 60
    learning_rate: float | None = None
    batch_size: int = 4
    max_length: int = 256
    seed: int = 0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lisa: LisaConfig | None = None
    eval_batch_size: int = 8
    max_new_tokens: int = 96
    score_accuracy: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {METHODS}")
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lora_rank": self.lora_rank,
            "eval_batch_size": self.eval_batch_size,
            "max_new_tokens": self.max_new_tokens,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be at least 2")
        if self.learning_rate is not None and not (
            self.learning_rate > 0 and math.isfinite(self.learning_rate)
        ):
            raise ValueError(
                f"learning_rate={self.learning_rate} must be a positive number (or None for the default)"
            )
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} and weight_decay={self.weight_decay} must be >= 0"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(
                f"lora_alpha={self.lora_alpha} must be positive (or None for 2 * rank)"
            )
        if self.lisa is not None and self.method != "lisa":
            raise ValueError(
                f"a LisaConfig was given with method={self.method!r}; use method='lisa' or drop it"
            )
        if self.lisa is not None and not isinstance(self.lisa, LisaConfig):
            raise ValueError(f"lisa must be a LisaConfig, got {type(self.lisa).__name__}")

    @property
    def resolved_learning_rate(self) -> float:
        """The learning rate used: the given one, or the method's default."""
        return (
            DEFAULT_LEARNING_RATES[self.method]
            if self.learning_rate is None
            else self.learning_rate
        )

    @property
    def resolved_lisa(self) -> LisaConfig:
        """The LISA settings used (defaults filled in with this run's seed)."""
        if self.lisa is not None:
            return self.lisa
        return LisaConfig(gamma=DEFAULT_LISA_GAMMA, interval=DEFAULT_LISA_INTERVAL, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (a sampler instance is recorded by its class name)."""
        settings = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lisa"
        }
        settings["learning_rate"] = self.resolved_learning_rate
        if self.method == "lisa":
            lisa = self.resolved_lisa
            lisa_settings = {f.name: getattr(lisa, f.name) for f in dataclasses.fields(lisa)}
            if not isinstance(lisa.sampler, str):
                lisa_settings["sampler"] = type(lisa.sampler).__name__
            settings["lisa"] = lisa_settings
        if self.method == "lora":
            settings["lora_alpha"] = self.lora_alpha or 2 * self.lora_rank
        return settings


@dataclass
class FinetuneResult:
    """What a run produced.

    Attributes:
        model: the trained model (a peft ``PeftModel`` for LoRA).
        metrics: the ``metrics.json`` content: settings, before/after loss and accuracy, timing.
        log_history: the Trainer's log history, one row per log (``step``, ``loss``, ...).
        active_history: LISA's ``(step, active_blocks)`` draws; empty for LoRA and FT.
        predictions: ``{"before": DataFrame, "after": DataFrame}`` of generated answers.
        out_dir: where files were written, or ``None``.
    """

    model: Any
    metrics: dict[str, Any]
    log_history: pd.DataFrame
    active_history: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    out_dir: Path | None = None


def finetune(
    model,
    tokenizer,
    train_examples: Sequence[dict],
    eval_examples: Sequence[dict],
    config: FinetuneConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    evaluate_before: bool = True,
) -> FinetuneResult:
    """Train one method on ``train_examples`` and score held-out loss and accuracy around it.

    The model is trained in place (LoRA wraps it with peft first). Evaluation: token-weighted
    mean cross-entropy over the response tokens of ``eval_examples``, and the fraction of those
    with an ``"answer"`` whose greedy generation parses to the same number.

    Args:
        model: a causal LM (e.g. from :func:`lisa.models.load_model`).
        tokenizer: its tokenizer, with a chat template and a pad token.
        train_examples: examples (``instruction``, ``input``, ``output``), e.g. from
            :func:`lisa.data.load_examples`.
        eval_examples: held-out examples; those with an ``answer`` count for accuracy.
        config: the run settings; defaults to ``FinetuneConfig()`` (LISA, 60 steps).
        out_dir: folder for metrics.json, log_history.csv, predictions, active_sets.json and
            loss_curve.png; ``None`` writes nothing.
        progress: show tqdm progress bars (the Trainer's, and one for generation).
        evaluate_before: also score the model before training (skip to save time).

    Returns:
        A :class:`FinetuneResult`.

    Example:
        >>> from lisa.models import load_model
        >>> from lisa.data import make_math_problems
        >>> model, tokenizer = load_model("tiny-llama")
        >>> result = finetune(model, tokenizer, make_math_problems(8), make_math_problems(2, split="test"),
        ...                   FinetuneConfig(method="lisa", steps=2, max_length=384), progress=False)
        >>> sorted(result.metrics["after"])
        ['accuracy', 'eval_loss', 'num_scored']
    """
    from transformers import Trainer, TrainingArguments

    config = config or FinetuneConfig()
    out_path = Path(out_dir) if out_dir is not None else None
    train_features = tokenize_examples(train_examples, tokenizer, max_length=config.max_length)
    eval_features = tokenize_examples(eval_examples, tokenizer, max_length=config.max_length)
    if not train_features:
        raise ValueError("no training examples; pass at least one")
    collator = DataCollator(tokenizer)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    model.to(device)

    predictions: dict[str, pd.DataFrame] = {}
    metrics: dict[str, Any] = {
        "method": config.method,
        "model": _model_name(model),
        "settings": config.to_dict(),
        "num_train_examples": len(train_features),
        "num_eval_examples": len(eval_examples),
        "device": str(device),
    }
    if evaluate_before:
        metrics["before"], predictions["before"] = evaluate(
            model,
            tokenizer,
            eval_examples,
            eval_features,
            config,
            progress=progress,
            label="before",
        )

    model, callbacks = _prepare_method(model, config)
    metrics["trainable_parameters"] = _trainable_parameters(model, config)

    with tempfile.TemporaryDirectory(prefix="lisa-trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,  # nothing is saved there (save_strategy="no")
            max_steps=config.steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.resolved_learning_rate,
            lr_scheduler_type=config.lr_scheduler,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            optim="adamw_torch",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not use_cuda,
            bf16=use_cuda and torch.cuda.is_bf16_supported(),
            seed=config.seed,
            data_seed=config.seed,
            disable_tqdm=not progress,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_features,
            data_collator=collator,
            callbacks=callbacks,
        )
        _replace_progress_reporting(trainer, progress)
        start = time.perf_counter()
        train_output = trainer.train()
        elapsed = time.perf_counter() - start
    log_history = pd.DataFrame(trainer.state.log_history)
    model.eval()

    losses = log_history["loss"].dropna() if "loss" in log_history else pd.Series(dtype=float)
    metrics.update(
        {
            "train_loss_mean": float(train_output.training_loss),
            "train_loss_first": float(losses.iloc[0]) if len(losses) else None,
            "train_loss_last": float(losses.iloc[-1]) if len(losses) else None,
            "train_runtime_s": round(elapsed, 3),
            "seconds_per_step": round(elapsed / config.steps, 4),
            # Measured on the optimizer the Trainer built, after the last step.
            "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
            "versions": library_versions(),
        }
    )
    active_history: list[tuple[int, tuple[int, ...]]] = []
    if config.method == "lisa":
        lisa = callbacks[0].lisa
        active_history = [
            (int(step), tuple(int(b) for b in blocks)) for step, blocks in lisa.history
        ]
        metrics["num_blocks"] = lisa.layer_map.num_blocks
        metrics["num_switches"] = len(active_history)
    metrics["after"], predictions["after"] = evaluate(
        model, tokenizer, eval_examples, eval_features, config, progress=progress, label="after"
    )
    result = FinetuneResult(model, metrics, log_history, active_history, predictions, out_path)
    if out_path is not None:
        write_run(result, out_path)
    return result


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
        return lora_wrap(model, config), []
    for parameter in model.parameters():
        # LISA too: the Trainer's optimizer must hold every parameter before the first freeze.
        parameter.requires_grad_(True)
    if config.method == "lisa":
        from lisa.callback import LisaCallback  # the Trainer machinery, only when used

        return model, [LisaCallback(config.resolved_lisa)]
    return model, []


def lora_wrap(model, config: FinetuneConfig):
    """Wrap ``model`` with rank-``config.lora_rank`` LoRA adapters on every block linear layer.

    Args:
        model: a causal LM.
        config: supplies ``lora_rank``, ``lora_alpha``, ``lora_dropout`` and ``seed`` (adapter
            init is seeded on a forked RNG).

    Returns:
        The peft ``PeftModel``; only adapter weights require grad.
    """
    return wrap_lora(
        model,
        rank=config.lora_rank,
        alpha=config.lora_alpha or 2 * config.lora_rank,
        dropout=config.lora_dropout,
        seed=config.seed,
    )


def evaluate(
    model,
    tokenizer,
    examples: Sequence[dict],
    features: Sequence[dict] | None,
    config: FinetuneConfig,
    *,
    progress: bool = False,
    label: str = "",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score held-out loss and exact-match accuracy.

    Args:
        model: the model (any mode; evaluated in eval mode, left in eval mode).
        tokenizer: its tokenizer.
        examples: the held-out examples.
        features: their tokenised form; ``None`` tokenises them with ``config.max_length``.
        config: supplies ``eval_batch_size``, ``max_new_tokens`` and ``max_length``.
        progress: show a tqdm bar over generation batches.
        label: shown in the progress bar and logs.

    Returns:
        (``{"eval_loss", "accuracy", "num_scored"}``, predictions DataFrame).
    """
    if features is None:
        features = tokenize_examples(examples, tokenizer, max_length=config.max_length)
    start = time.perf_counter()
    loss = evaluate_loss(
        model, features, DataCollator(tokenizer), batch_size=config.eval_batch_size
    )
    if config.score_accuracy:
        predictions = generate_answers(
            model,
            tokenizer,
            examples,
            batch_size=config.eval_batch_size,
            max_new_tokens=config.max_new_tokens,
            progress=progress,
            description=f"generating ({label})" if label else "generating",
        )
    else:
        predictions = pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    scored = predictions["correct"].dropna()
    accuracy = float(scored.astype(bool).mean()) if len(scored) else None
    logger.info(
        "eval %s: loss %.4f, accuracy %s over %d (%.1f s)",
        label, loss, accuracy, len(scored), time.perf_counter() - start,
    )  # fmt: skip
    return {"eval_loss": loss, "accuracy": accuracy, "num_scored": len(scored)}, predictions


@torch.no_grad()
def evaluate_loss(
    model, features: Sequence[dict], collator: DataCollator, *, batch_size: int = 8
) -> float:
    """Token-weighted mean cross-entropy over the label (response) tokens of ``features``.

    loss = sum over examples and response positions of -log p(token) / number of such tokens.
    Unlike an average of per-batch means, this does not depend on how examples are batched.

    Args:
        model: a causal LM.
        features: tokenised examples with ``input_ids``, ``attention_mask``, ``labels``.
        collator: pads a list of features into tensors.
        batch_size: examples per forward pass.

    Returns:
        The mean loss, or ``nan`` when there are no label tokens.
    """
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = {
            k: v.to(device) for k, v in collator(list(features[start : start + batch_size])).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Position t predicts token t+1.
        shifted_logits = logits[:, :-1].float()  # (batch, length-1, vocab)
        shifted_labels = batch["labels"][:, 1:]  # (batch, length-1)
        total += torch.nn.functional.cross_entropy(
            shifted_logits.reshape(-1, shifted_logits.shape[-1]),
            shifted_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        count += int((shifted_labels != IGNORE_INDEX).sum())
    return total / count if count else float("nan")


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    examples: Sequence[dict],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    progress: bool = False,
    description: str = "generating",
) -> pd.DataFrame:
    """Greedy-decode an answer to every example (batched, left-padded) and score it.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (chat template, pad and eos tokens).
        examples: dicts with ``instruction``, optional ``input`` and ``answer``.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: generation budget per prompt.
        progress: show a tqdm bar.
        description: the bar's label.

    Returns:
        One row per example: ``instruction``, ``answer``, ``generated``, ``predicted``
        (parsed number or None) and ``correct`` (bool, or None without a reference answer).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    model.eval()
    device = next(model.parameters()).device
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    rows = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc=description, disable=not progress, leave=False):
        batch_examples = examples[start : start + batch_size]
        prompts = [
            tokenizer(prompt_text(example, tokenizer), add_special_tokens=False)["input_ids"]
            for example in batch_examples
        ]
        width = max(len(ids) for ids in prompts)
        # Left padding: every prompt ends at the same column, where generation starts.
        input_ids = torch.tensor(
            [[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompts], device=device
        )  # (batch, width)
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device
        )
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
        )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for example, text in zip(batch_examples, texts, strict=True):
            reference = example.get("answer")
            predicted = extract_answer(text)
            correct = None
            if reference is not None:
                canonical = normalize_number(str(reference)) or str(reference).strip()
                correct = predicted is not None and predicted == canonical
            rows.append(
                {
                    "instruction": example["instruction"],
                    "answer": reference,
                    "generated": text,
                    "predicted": predicted,
                    "correct": correct,
                }
            )
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def write_run(result: FinetuneResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a run's files into ``out_dir`` (each written atomically).

    Files: ``metrics.json``, ``log_history.csv``, ``predictions_before.csv`` /
    ``predictions_after.csv``, ``active_sets.json`` (LISA only) and ``loss_curve.png``.

    Args:
        result: what :func:`finetune` returned.
        out_dir: the folder (created if missing).

    Returns:
        ``{name: path}`` of the files written.
    """
    from diagnostics.plots import plot_loss_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["metrics"] = atomic_write_text(
        out / "metrics.json", json.dumps(result.metrics, indent=2, default=str)
    )
    written["log_history"] = atomic_write_text(
        out / "log_history.csv", result.log_history.to_csv(index=False)
    )
    for stage, table in result.predictions.items():
        if table.empty:
            continue
        written[f"predictions_{stage}"] = atomic_write_text(
            out / f"predictions_{stage}.csv", table.to_csv(index=False)
        )
    if result.metrics["method"] == "lisa":
        history = [
            {"step": step, "active_blocks": list(blocks)} for step, blocks in result.active_history
        ]
        written["active_sets"] = atomic_write_text(
            out / "active_sets.json", json.dumps(history, indent=1)
        )
    if "loss" in result.log_history and result.log_history["loss"].notna().any():
        title = f"{result.metrics['method'].upper()} on {result.metrics['model']}"
        written["loss_curve"] = out / "loss_curve.png"
        plot_loss_curve(result.log_history, written["loss_curve"], title=title)
    return written


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or ""
    return name or type(model).__name__


def _trainable_parameters(model, config: FinetuneConfig) -> int:
    """Parameters that train at a time: all for FT, adapters for LoRA, E+H+gamma blocks for LISA."""
    if config.method != "lisa":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    from lisa.layers import LayerMap, block_index

    layer_map = LayerMap.from_model(model, config.resolved_lisa.blocks_path)
    lisa = config.resolved_lisa
    fixed = {"embed": lisa.train_embeddings, "head": lisa.train_head, "extras": lisa.train_extras}
    always = sum(
        layer_map.numel(group)
        for group, on in fixed.items()
        if on and group in layer_map.group_names
    )
    block_sizes = sorted(
        (
            layer_map.numel(group)
            for group in layer_map.group_names
            if block_index(group) is not None
        ),
        reverse=True,
    )
    # Blocks of one model are alike; the largest gamma bound the peak.
    return always + sum(block_sizes[: _lisa_gamma(lisa, layer_map.num_blocks)])


def _lisa_gamma(lisa: LisaConfig, num_blocks: int) -> int:
    sampler_gamma = getattr(lisa.sampler, "gamma", None)
    return min(num_blocks, int(sampler_gamma if sampler_gamma is not None else lisa.gamma))
