"""lisa estimate's load rows: a rank's peak CPU memory while loading, full copy vs sharded."""

from __future__ import annotations

import math

import pytest

from lisa_apps.estimate import Setup, estimate
from lisa_apps.estimate.report import format_table
from lisa_apps.tiny import tiny_config

CONFIG = tiny_config("tiny-llama", vocab_size=321)  # 321 rows: uneven over 2 and 4 ranks


def _shapes() -> list[tuple[int, ...]]:
    from lisa_apps.models import meta_model

    return [tuple(p.shape) for p in meta_model(CONFIG).parameters()]


def test_full_copy_is_float32_weights_plus_the_mapped_bf16_checkpoint():
    (row,) = estimate(CONFIG, [Setup("lisa", "bf16", fsdp_ranks=2)])
    parameters = sum(math.prod(shape) for shape in _shapes())
    assert row["load_full_copy_bytes"] == parameters * (4 + 2)


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("precision,width", [("bf16", 2), ("float32", 4)])
def test_sharded_load_is_the_padded_shards_plus_one_slice(ranks, precision, width):
    (row,) = estimate(CONFIG, [Setup("ft", precision, fsdp_ranks=ranks)])
    # Each rank stores ceil(rows / W) rows of every tensor (FSDP2 pads to the first chunk).
    shards = [math.ceil(s[0] / ranks) * math.prod(s[1:]) for s in _shapes()]
    assert row["load_sharded_bytes"] == sum(shards) * width + max(shards) * 2
    assert row["load_sharded_bytes"] < row["load_full_copy_bytes"] / ranks


def test_no_sharded_load_for_one_process_or_lora():
    rows = estimate(CONFIG, [Setup("lisa", "bf16"), Setup("lora", "bf16", fsdp_ranks=2)])
    assert [row["load_sharded_bytes"] for row in rows] == [None, None]
    # LoRA's full copy is the base model's: its adapters are created after loading.
    assert rows[1]["load_full_copy_bytes"] == rows[0]["load_full_copy_bytes"]


def test_the_table_shows_both_ways():
    rows = estimate(CONFIG, [Setup("lisa", "bf16", fsdp_ranks=2)], model_name="tiny")
    (line,) = [line for line in format_table(rows).splitlines() if line.startswith("loading")]
    assert "full copy" in line and "shard by shard" in line
