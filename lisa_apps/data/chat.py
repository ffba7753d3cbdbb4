"""Chat-template tokenisation with the loss on the response only, and padding into batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = ["IGNORE_INDEX", "DataCollator", "prompt_text", "tokenize_examples", "user_message"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


def user_message(example: dict) -> str:
    """Return the user turn of an example: the instruction, then the input on a new paragraph.

    Args:
        example: a dict with ``"instruction"`` and optional ``"input"``.

    Returns:
        The user message text.
    """
    extra = example.get("input") or ""
    return f"{example['instruction']}\n\n{extra}" if extra.strip() else example["instruction"]


def prompt_text(example: dict, tokenizer) -> str:
    """Return the chat-formatted prompt (user turn plus the assistant header) of an example.

    Args:
        example: a dict with ``"instruction"`` and optional ``"input"``.
        tokenizer: a tokenizer with a chat template.

    Returns:
        The text a model continues to answer.
    """
    messages = [{"role": "user", "content": user_message(example)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_examples(examples: Sequence[dict], tokenizer, *, max_length: int = 256) -> list[dict]:
    """Tokenise examples with the chat template, masking the prompt so loss is on the response.

    The prompt (user turn + assistant header) and the response (the rest of the templated
    conversation: output and end-of-turn tokens) are tokenised separately and concatenated,
    so the boundary is exact: ``labels`` are ``-100`` on every prompt token and equal
    ``input_ids`` on every response token.

    Truncation rule: the prompt is kept whole and the response is cut at its end to fit
    ``max_length``. An example whose prompt leaves no room for a response token is skipped;
    skipped and truncated counts are logged as warnings, and if every example would be
    skipped a ValueError is raised.

    Args:
        examples: dicts with ``"instruction"``, optional ``"input"``, ``"output"``.
        tokenizer: a tokenizer with a chat template.
        max_length: the longest sequence, in tokens (>= 2).

    Returns:
        One dict per kept example with ``"input_ids"``, ``"attention_mask"``, ``"labels"``
        (lists of int of the same length).
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 (a prompt and a response)")
    features: list[dict] = []
    skipped: list[int] = []
    truncated = 0
    for index, example in enumerate(examples):
        prompt = prompt_text(example, tokenizer)
        messages = [
            {"role": "user", "content": user_message(example)},
            {"role": "assistant", "content": example["output"]},
        ]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render the prompt as a prefix of the conversation; "
                "tokenize_examples needs a template where it does (e.g. ChatML)"
            )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        room = max_length - len(prompt_ids)
        if room < 1:
            skipped.append(index)
            continue
        if len(response_ids) > room:
            truncated += 1
            response_ids = response_ids[:room]
        input_ids = prompt_ids + response_ids
        features.append(
            {
                "input_ids": input_ids,
                "attention_mask": [1] * len(input_ids),
                "labels": [IGNORE_INDEX] * len(prompt_ids) + list(response_ids),
            }
        )
    if skipped:
        logger.warning(
            "skipped %d of %d examples whose prompt fills max_length=%d (first: %s)",
            len(skipped), len(examples), max_length, skipped[:5],
        )  # fmt: skip
    if truncated:
        logger.warning(
            "truncated the response of %d of %d examples to fit max_length=%d",
            truncated, len(examples), max_length,
        )  # fmt: skip
    if examples and not features:
        raise ValueError(
            f"every example's prompt is at least max_length={max_length} tokens; raise max_length"
        )
    return features


class DataCollator:
    """Pad tokenised examples into a batch: pad id for inputs, 0 for the mask, -100 for labels.

    Right padding (training). Build it from a tokenizer or a pad id directly.

    Example:
        >>> collate = DataCollator(pad_token_id=0)
        >>> batch = collate([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]},
        ...                  {"input_ids": [7], "attention_mask": [1], "labels": [7]}])
        >>> batch["labels"].tolist()
        [[-100, 6], [7, -100]]
    """

    def __init__(self, tokenizer=None, *, pad_token_id: int | None = None):
        if pad_token_id is None:
            if tokenizer is None or tokenizer.pad_token_id is None:
                raise ValueError(
                    "DataCollator needs a pad id: pass a tokenizer with a pad token or pad_token_id=..."
                )
            pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(feature["input_ids"]) for feature in features)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, pad_value in pad_values.items():
            rows = [
                list(feature[key]) + [pad_value] * (length - len(feature[key]))
                for feature in features
            ]
            batch[key] = torch.tensor(rows, dtype=torch.long)  # (batch, length)
        return batch
