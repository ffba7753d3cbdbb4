"""Chat-template tokenisation with the loss on every assistant turn, and padding into batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

__all__ = [
    "IGNORE_INDEX",
    "DataCollator",
    "example_messages",
    "loss_spans",
    "prompt_text",
    "render_messages",
    "tokenize_examples",
    "user_message",
]

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


def example_messages(example: dict) -> list[dict]:
    """Return an example as chat messages: its ``messages``, or alpaca's system, user and output.

    Args:
        example: a canonical example with ``"messages"``, or ``"instruction"``/``"output"``
            (and optional ``"input"``, ``"system"``).

    Returns:
        A list of ``{"role", "content"}`` dicts.
    """
    if "messages" in example:
        return [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    messages = [{"role": "system", "content": example["system"]}] if example.get("system") else []
    messages.append({"role": "user", "content": user_message(example)})
    if "output" in example:
        messages.append({"role": "assistant", "content": example["output"]})
    return messages


def render_messages(messages: Sequence[dict], tokenizer, *, add_generation_prompt: bool = False) -> str:
    """Render chat messages to text with the tokenizer's chat template.

    A tokenizer without a chat template gets a plain layout instead (and
    :func:`tokenize_examples` warns): one ``"role: content"`` line per message, the end-of-text
    token after each assistant message (so the model learns to stop), and ``"assistant: "`` as
    the generation prompt.

    Args:
        messages: ``{"role", "content"}`` dicts.
        tokenizer: the tokenizer.
        add_generation_prompt: end with the header of an assistant turn.

    Returns:
        The text.

    Raises:
        ValueError: the template refuses the conversation (e.g. roles out of its order).
    """
    if getattr(tokenizer, "chat_template", None):
        if not messages:
            return _empty_prompt(tokenizer) if add_generation_prompt else ""
        return _apply_template(list(messages), tokenizer, add_generation_prompt)
    eos = tokenizer.eos_token or ""
    lines = [
        f"{m['role']}: {m['content']}{eos if m['role'] == 'assistant' else ''}\n" for m in messages
    ]
    return "".join(lines) + ("assistant: " if add_generation_prompt else "")


def _apply_template(messages: list[dict], tokenizer, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # jinja raises TemplateError subclasses; all mean "refused"
        roles = [m["role"] for m in messages]
        raise ValueError(f"the chat template refuses the roles {roles}: {error}") from None


def _empty_prompt(tokenizer) -> str:
    # The assistant header alone, for a conversation that opens with the assistant.
    with_user = _apply_template([{"role": "user", "content": "x"}], tokenizer, False)
    prompted = _apply_template([{"role": "user", "content": "x"}], tokenizer, True)
    return prompted[len(with_user) :]


def prompt_text(example: dict, tokenizer) -> str:
    """Return the chat-formatted prompt of an example: every turn before its last assistant turn,
    then the assistant header.

    Args:
        example: an alpaca example (``"instruction"``, optional ``"input"``, ``"system"``) or one
            with ``"messages"``.
        tokenizer: its tokenizer (a chat template, or the plain fallback layout).

    Returns:
        The text a model continues to answer.
    """
    messages = example_messages(example)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return render_messages(messages[:last], tokenizer, add_generation_prompt=True)


def loss_spans(messages: Sequence[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the characters each assistant message adds.

    Prefixes are rendered one message at a time: the span of assistant message ``i`` runs from
    the end of ``render(messages[:i], add_generation_prompt=True)`` (its header) to the end of
    ``render(messages[: i + 1])`` (its content and end-of-turn marker). Each render must be a
    prefix of the next, which holds for ChatML, Llama 3 and most templates; a template that
    rewrites earlier turns is refused.

    Args:
        messages: ``{"role", "content"}`` dicts.
        tokenizer: the tokenizer.

    Returns:
        (the full text, ``[(start, end)]`` character spans that carry loss).
    """
    full = render_messages(messages, tokenizer)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        header = render_messages(messages[:index], tokenizer, add_generation_prompt=True)
        turn = render_messages(messages[: index + 1], tokenizer)
        if not (turn.startswith(header) and full.startswith(turn)):
            raise ValueError(
                "the chat template does not render each conversation prefix as a prefix of the "
                "whole conversation, so the assistant turns cannot be located; use a tokenizer "
                "whose template does (e.g. ChatML)"
            )
        spans.append((len(header), len(turn)))
    return full, spans


def _conversation_features(messages: Sequence[dict], tokenizer) -> tuple[list[int], list[int]]:
    full, spans = loss_spans(messages, tokenizer)
    if getattr(tokenizer, "is_fast", False):
        # One tokenisation of the full render; a token carries loss when it starts in a span.
        encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoded["input_ids"])
        labels = [
            token if any(start <= offset < end for start, end in spans) else IGNORE_INDEX
            for token, (offset, _) in zip(input_ids, encoded["offset_mapping"], strict=True)
        ]
        return input_ids, labels
    # A slow tokenizer has no offsets: tokenise the pieces, then check they add up to the whole.
    input_ids, labels, cursor = [], [], 0
    for start, end in [*spans, (len(full), len(full))]:
        for piece, learn in ((full[cursor:start], False), (full[start:end], True)):
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            input_ids += ids
            labels += ids if learn else [IGNORE_INDEX] * len(ids)
        cursor = end
    if input_ids != tokenizer(full, add_special_tokens=False)["input_ids"]:
        raise ValueError(
            "tokenising the conversation piece by piece differs from tokenising it whole; use "
            "a fast tokenizer (it gives character offsets)"
        )
    return input_ids, labels


def _text_features(text: str, tokenizer) -> tuple[list[int], list[int]]:
    input_ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)  # documents end, so packed neighbours are told apart
    return input_ids, list(input_ids)


def tokenize_examples(
    examples: Sequence[dict], tokenizer, *, max_length: int = 256, drop_long: bool = False
) -> list[dict]:
    """Tokenise examples; the loss is on every assistant turn (or, for ``text``, every token).

    A conversation (alpaca's user turn and output, or ``messages``) is rendered with the chat
    template and tokenised whole; ``labels`` equal ``input_ids`` on the tokens of each assistant
    message (its content and end-of-turn marker) and are ``-100`` on everything else: system and
    user turns and the assistant headers (see :func:`loss_spans`). A ``text`` example is
    tokenised with the tokenizer's special tokens plus an end-of-text token, loss on all.

    Length rule: an example longer than ``max_length`` is cut at its end (warned with a count),
    or dropped when ``drop_long``. An example left with no loss token (its assistant turns all
    cut away) is skipped, counted in a warning; if none is left a ValueError is raised.

    Args:
        examples: canonical examples (see :mod:`lisa_apps.data.formats`).
        tokenizer: a tokenizer; without a chat template the plain layout of
            :func:`render_messages` is used, with a warning.
        max_length: the longest sequence, in tokens (>= 2).
        drop_long: drop examples over ``max_length`` instead of cutting them.

    Returns:
        One dict per kept example with ``"input_ids"``, ``"attention_mask"``, ``"labels"``
        (lists of int of the same length).
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 (a prompt and a response)")
    if not getattr(tokenizer, "chat_template", None) and any("text" not in e for e in examples[:1]):
        logger.warning(
            "the tokenizer has no chat template; conversations are rendered as plain "
            "'role: content' lines (see docs/data.md)"
        )
    features: list[dict] = []
    skipped: list[int] = []
    truncated = dropped = 0
    for index, example in enumerate(examples):
        if "text" in example and "output" not in example and "messages" not in example:
            input_ids, labels = _text_features(example["text"], tokenizer)
        else:
            input_ids, labels = _conversation_features(example_messages(example), tokenizer)
        if len(input_ids) > max_length:
            if drop_long:
                dropped += 1
                continue
            truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        # Position t predicts token t+1, so a label on the first token alone trains nothing.
        if all(label == IGNORE_INDEX for label in labels[1:]):
            skipped.append(index)
            continue
        features.append(
            {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
        )
    if skipped:
        logger.warning(
            "skipped %d of %d examples with no response token within max_length=%d (first: %s)",
            len(skipped), len(examples), max_length, skipped[:5],
        )  # fmt: skip
    if truncated:
        logger.warning(
            "truncated the response of %d of %d examples to fit max_length=%d (drop_long drops "
            "them instead)", truncated, len(examples), max_length,
        )  # fmt: skip
    if dropped:
        logger.warning(
            "dropped %d of %d examples longer than max_length=%d", dropped, len(examples), max_length
        )
    if len(examples) and not features:
        raise ValueError(
            f"no example has a response token within max_length={max_length} tokens; raise "
            "max_length" + (" or drop --drop-long" if dropped else "")
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
        if "position_ids" in features[0]:
            return _collate_packed(features, length, self.pad_token_id)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key, pad_value in pad_values.items():
            rows = [
                list(feature[key]) + [pad_value] * (length - len(feature[key]))
                for feature in features
            ]
            batch[key] = torch.tensor(rows, dtype=torch.long)  # (batch, length)
        return batch


def _collate_packed(features: list[dict], length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    # Packed rows (see lisa_apps.data.packing) carry no attention mask: transformers reads the
    # example boundaries from position_ids restarting at 0 and masks attention across them. The
    # padding is one more such segment, with no labels.
    rows = {"input_ids": [], "labels": [], "position_ids": []}
    for feature in features:
        pad = length - len(feature["input_ids"])
        rows["input_ids"].append(list(feature["input_ids"]) + [pad_token_id] * pad)
        rows["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
        rows["position_ids"].append(list(feature["position_ids"]) + list(range(pad)))
    return {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}
