"""Packing: short tokenised examples joined into rows of up to ``max_length`` tokens, kept apart.

A packed row holds several examples end to end, with ``position_ids`` that restart at 0 for
each and no attention mask. transformers (>= 4.53, ``masking_utils.find_packed_sequence_indices``)
reads the restarts as example boundaries and builds a block-diagonal causal mask for the eager
and SDPA attention implementations, so no token attends to another example and every example
sees the positions it would see alone. It does so only without a KV cache: the forward needs
``use_cache=False`` (:func:`model_inputs` adds it; ``finetune`` sets ``config.use_cache``),
or the examples of a row see each other. The first label of each example is set to -100: it
would otherwise be predicted from the previous example's last token, which an unpacked batch
never does. So a packed batch has the same loss as the unpacked batch of the same examples
(tests/lisa_apps/test_data_formats.py checks it), in fewer, fuller rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from lisa_apps.data.chat import IGNORE_INDEX

__all__ = ["model_inputs", "pack_features"]


def pack_features(features: Sequence[dict], max_length: int) -> list[dict]:
    """Join consecutive features into rows of at most ``max_length`` tokens (greedy, in order).

    Args:
        features: tokenised examples (``input_ids``, ``labels``), each at most ``max_length``.
        max_length: the longest packed row.

    Returns:
        Packed features with ``input_ids``, ``labels`` and ``position_ids`` (no
        ``attention_mask``: :class:`~lisa_apps.data.DataCollator` then collates them as packed).

    Example:
        >>> rows = pack_features([{"input_ids": [1, 2], "labels": [1, 2]},
        ...                       {"input_ids": [3, 4, 5], "labels": [-100, 4, 5]}], max_length=8)
        >>> rows[0]["position_ids"], rows[0]["labels"]
        ([0, 1, 0, 1, 2], [-100, 2, -100, 4, 5])
    """
    rows: list[dict] = []
    current: dict | None = None
    for feature in features:
        ids = list(feature["input_ids"])
        if len(ids) > max_length:
            raise ValueError(
                f"a feature of {len(ids)} tokens is longer than max_length={max_length}; "
                "tokenise with the same max_length"
            )
        if current is None or len(current["input_ids"]) + len(ids) > max_length:
            current = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(current)
        current["input_ids"] += ids
        current["labels"] += [IGNORE_INDEX, *list(feature["labels"])[1:]]
        current["position_ids"] += list(range(len(ids)))
    return rows


def model_inputs(batch: dict) -> dict:
    """The forward arguments of a collated batch: ids, and the mask or the packed positions.

    A packed batch also gets ``use_cache=False``: transformers looks for example boundaries in
    ``position_ids`` only when there is no KV cache, and a causal LM builds one by default
    (``config.use_cache``), so a packed forward with a cache lets examples attend to each other.
    """
    inputs = {
        key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch
    }
    if "position_ids" in inputs:
        inputs["use_cache"] = False
    return inputs
