"""Held-out scoring: token-weighted response loss and exact-match accuracy of greedy answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from lisa_apps.data import (
    IGNORE_INDEX,
    DataCollator,
    extract_answer,
    normalize_number,
    prompt_text,
    tokenize_examples,
)
from lisa_apps.training.config import FinetuneConfig

__all__ = ["PREDICTION_COLUMNS", "evaluate", "evaluate_loss", "generate_answers"]

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("instruction", "answer", "generated", "predicted", "correct")


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
    # Chat and text sets carry no reference answer: only held-out loss is scored for them.
    answered = any(example.get("answer") is not None for example in examples)
    if config.score_accuracy and answered:
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
