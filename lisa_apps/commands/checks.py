"""Checks the commands make before any weight loads: flags of another method, lengths, LoRA rank.

Each check raises ``ValueError`` naming the flag and the fix (the dispatcher turns it into one
line and exit status 2) or returns a note for the run's log.
"""

from __future__ import annotations

from collections.abc import Sequence

# Longer than any model's positions: tokenising with it keeps every record whole.
_UNLIMITED = 2**31


def only_for(flags: Sequence[str], where: str, fix: str) -> str:
    """``--interval applies only to --method lisa; drop it or pass --method lisa``."""
    one = len(flags) == 1
    return (
        f"{', '.join(flags)} {'applies' if one else 'apply'} only to {where}; drop "
        f"{'it' if one else 'them'} or {fix}"
    )


def refuse_flags_of_other_methods(method: str, given: dict[str, Sequence[str]]) -> None:
    """Refuse flags of methods other than ``method``; ``given`` maps a method to its given flags."""
    for owner, flags in given.items():
        if owner != method and flags:
            raise ValueError(only_for(flags, f"--method {owner}", f"pass --method {owner}"))


def check_max_length(max_length: int, info, flag: str = "--max-length") -> None:
    """Refuse a length beyond the model's positions (read from its config)."""
    from lisa_apps.models import model_positions

    if max_length < 2:
        raise ValueError(
            f"{flag} {max_length} leaves no room for a prompt and a response token; use "
            f"{flag} 2 or more"
        )
    positions = model_positions(info.config)
    if positions is not None and max_length > positions:
        raise ValueError(
            f"{flag} {max_length} is more than the {positions} positions of {info.name} "
            f"(max_position_embeddings in its config); use {flag} {positions} or less"
        )


def check_lora_rank(rank: int, info, flag: str = "--lora-rank") -> None:
    """Refuse a LoRA rank above min(in, out) of the smallest adapted linear layer."""
    from lisa_apps.models import lora_rank_limit

    limit, layer = lora_rank_limit(info.config)
    if rank > limit:
        raise ValueError(
            f"{flag} {rank} is more than {limit}, the smaller side of {info.name}'s adapted "
            f"layer {layer}, so the extra rank adds parameters but no capacity; use {flag} "
            f"1..{limit}"
        )


def record_lengths(examples: Sequence[dict], tokenizer) -> list[tuple[int, int]]:
    """(tokens before the first response token, all tokens) of each record, tokenised whole."""
    from lisa_apps.data import IGNORE_INDEX, tokenize_examples

    lengths = []
    for example in examples:
        (features,) = tokenize_examples([example], tokenizer, max_length=_UNLIMITED)
        labels = features["labels"]
        prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        lengths.append((prompt, len(labels)))
    return lengths


def check_record_lengths(
    lengths: Sequence[tuple[int, int]],
    max_length: int,
    *,
    flag: str,
    what: str,
    data: str,
    drop_long: bool = False,
) -> str | None:
    """Refuse a length every record's prompt fills; return a note counting the longer records."""
    if not lengths:
        return None
    if drop_long and all(full > max_length for _, full in lengths):
        shortest = min(full for _, full in lengths)
        raise ValueError(
            f"{flag} {max_length}: every one of the {len(lengths)} {what} records of --data "
            f"{data} is longer (the shortest has {shortest} tokens) and --drop-long drops them "
            f"all; use {flag} {shortest} or more, or drop --drop-long"
        )
    skipped = sum(prompt >= max_length for prompt, _ in lengths)
    if skipped == len(lengths):
        shortest = min(prompt for prompt, _ in lengths)
        raise ValueError(
            f"{flag} {max_length}: the prompt of every one of the {len(lengths)} {what} records "
            f"of --data {data} has {shortest} tokens or more, so none leaves room for a "
            f"response; use {flag} {shortest + 1} or more"
        )
    longer = sum(full > max_length for _, full in lengths)
    if not longer:
        return None
    if drop_long:
        return (
            f"{longer} of {len(lengths)} {what} records of --data {data} are longer than "
            f"{flag} {max_length} tokens and are dropped (--drop-long)"
        )
    return (
        f"{longer} of {len(lengths)} {what} records of --data {data} are longer than {flag} "
        f"{max_length} tokens: {longer - skipped} {'has' if longer - skipped == 1 else 'have'} "
        "their response cut"
        + (f", {skipped} are skipped (the prompt alone fills it)" if skipped else "")
    )


def check_generation_length(
    lengths: Sequence[tuple[int, int]], max_new_tokens: int, info, *, fix: str
) -> None:
    """Refuse a generation budget that takes the longest held-out prompt past the positions."""
    from lisa_apps.models import model_positions

    positions = model_positions(info.config)
    if positions is None or not lengths:
        return
    prompt = max(prompt for prompt, _ in lengths)
    if prompt + max_new_tokens > positions:
        room = positions - prompt
        use = f"use --max-new-tokens {room} or less" if room >= 1 else "use shorter prompts"
        raise ValueError(
            f"--max-new-tokens {max_new_tokens}: the longest held-out prompt has {prompt} "
            f"tokens, and {prompt} + {max_new_tokens} is more than the {positions} positions "
            f"of {info.name}; {use}" + (f" ({fix})" if fix else "")
        )


def check_data_lengths(
    info,
    *,
    data: str,
    max_length: int,
    train_examples: Sequence[dict],
    eval_examples: Sequence[dict] = (),
    max_new_tokens: int | None = None,
    flag: str = "--max-length",
    no_generation_fix: str = "or pass --no-accuracy",
    drop_long: bool = False,
) -> list[str]:
    """Every length check of a command that trains (and generates); returns notes to log.

    Loads the model's tokenizer (no weights) and tokenises the records as training will.
    """
    from lisa_apps.models import load_tokenizer

    check_max_length(max_length, info, flag)
    tokenizer = load_tokenizer(info.name)
    notes = []
    for what, examples in (("training", train_examples), ("held-out", eval_examples)):
        lengths = record_lengths(examples, tokenizer)
        note = check_record_lengths(
            lengths, max_length, flag=flag, what=what, data=data, drop_long=drop_long
        )
        if note:
            notes.append(note)
        if what == "held-out" and max_new_tokens is not None:
            # Only records with a reference answer are generated for.
            scored = [
                n for e, n in zip(examples, lengths, strict=True) if e.get("answer") is not None
            ]
            check_generation_length(scored, max_new_tokens, info, fix=no_generation_fix)
    return notes


def check_split_sizes(
    data: str, *, train_records: int, test_records: int, val_examples: int, test_examples: int
) -> None:
    """Refuse validation and test sizes the data file cannot give (``lisa study``)."""
    if val_examples >= train_records:
        raise ValueError(
            f"--val-examples {val_examples}: --data {data} holds {train_records} training "
            f"records, and the validation split is carved from them with at least one left to "
            f"train; use --val-examples {train_records - 1} or less"
            if train_records > 1
            else f"--val-examples {val_examples}: --data {data} holds {train_records} training "
            "record, too few to carve a validation split from; use a larger file"
        )
    if test_examples > test_records:
        raise ValueError(
            f"--test-examples {test_examples}: --data {data} holds only {test_records} held-out "
            f"records (10% of its records, by content hash); use --test-examples "
            f"{test_records} or less"
            if test_records
            else f"--test-examples {test_examples}: --data {data} holds no held-out record (10% "
            "of its records, by content hash); use a larger file"
        )
