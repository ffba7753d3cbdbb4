"""`lisa estimate`'s pieces: model resolution, setups, FSDP2 shards, published counts, scale."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.fsdp._fully_shard._fsdp_common import _chunk_with_empty

from lisa_apps.estimate.accounting import Setup, shard_numel
from lisa_apps.estimate.configs import family_names, resolve_config
from lisa_apps.estimate.plan import Workload, estimate, suggestions
from lisa_apps.tiny import tiny_config

# Published parameter counts (docs/design.md section 8).
LLAMA_2_7B_PARAMETERS = 6_738_415_616
LLAMA_2_70B_PARAMETERS = 68_976_648_192


# -- FSDP2 shards ---------------------------------------------------------------------------


@given(
    rows=st.integers(min_value=1, max_value=300),
    rest=st.lists(st.integers(min_value=1, max_value=6), max_size=2),
    ranks=st.integers(min_value=1, max_value=16),
)
def test_shard_numel_is_the_padded_first_chunk_fsdp2_allocates_on_every_rank(rows, rest, ranks):
    shape = (rows, *rest)
    chunks = _chunk_with_empty(torch.empty(shape, device="meta"), ranks, dim=0)
    # FSDP2 pads every rank's shard to chunk 0's size (the "0th always padded" rule).
    assert shard_numel(shape, ranks) == chunks[0].numel()
    assert all(chunk.numel() <= chunks[0].numel() for chunk in chunks)
    assert shard_numel(shape, ranks) * ranks >= math.prod(shape)


@pytest.mark.parametrize("ranks", [2, 4])
def test_bytes_of_one_rank_are_a_wth_of_the_whole_when_every_dim_0_divides(ranks):
    config = tiny_config("tiny-llama")  # dim 0 of every tensor is a multiple of 4
    for method in ("ft", "lora", "lisa"):
        whole, shard = estimate(
            config, [Setup(method, "bf16"), Setup(method, "bf16", fsdp_ranks=ranks)]
        )
        for key in ("parameter_bytes", "grad_bytes"):
            assert shard[key] * ranks == whole[key]
        # Both moments are sharded like the grads; each trained tensor's 4-byte step is not.
        steps = whole["optimizer_state_bytes"] - 2 * whole["grad_bytes"]
        assert shard["optimizer_state_bytes"] == 2 * shard["grad_bytes"] + steps
        assert shard["trainable_parameters"] == whole["trainable_parameters"]


def test_uneven_dim_0_is_padded_on_every_rank():
    config = tiny_config("tiny-llama", vocab_size=321)  # 321 embedding rows over 4 ranks
    whole, shard = estimate(config, [Setup("ft", "float32"), Setup("ft", "float32", fsdp_ranks=4)])
    assert shard["parameter_bytes"] * 4 - whole["parameter_bytes"] == 2 * 3 * 64 * 4  # E and H


# -- setups ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "sgd"}, "method='sgd' is unknown"),
        ({"method": "ft", "precision": "fp16"}, "precision='fp16' is unknown"),
        ({"method": "ft", "gamma": 2}, "gamma=2 applies to method 'lisa' only"),
        ({"method": "lisa", "lora_rank": 8}, "lora_rank=8 applies to method 'lora' only"),
        ({"method": "lora", "lora_rank": 0}, "lora_rank=0 must be an integer >= 1"),
        ({"method": "lisa", "gamma": -1}, "gamma=-1 must be an integer >= 0"),
        ({"method": "ft", "fsdp_ranks": 0}, "fsdp_ranks=0 must be an integer >= 1"),
        ({"method": "badam", "fsdp_ranks": 2}, "BAdam has no FSDP2 path"),
    ],
)
def test_setup_refuses_a_bad_field_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Setup(**kwargs)


def test_setup_takes_the_project_defaults():
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LORA_RANK

    assert Setup("lisa").gamma == DEFAULT_GAMMA
    assert Setup("lora").lora_rank == DEFAULT_LORA_RANK
    assert Setup("ft").gamma is None and Setup("ft").lora_rank is None


def test_gamma_above_the_block_count_is_refused():
    with pytest.raises(ValueError, match="gamma=5 is more than the model's 4 blocks"):
        estimate(tiny_config("tiny-llama"), [Setup("lisa", "float32", gamma=5)])


# -- model resolution -------------------------------------------------------------------------


def test_a_folder_with_only_config_json_gives_the_rows_of_the_same_config(tmp_path):
    config = tiny_config("tiny-qwen2")
    config.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no weights at all
    source = resolve_config(str(tmp_path))
    assert source.kind == "folder"
    setups = [Setup("ft", "bf16"), Setup("lora", "bf16"), Setup("lisa", "bf16")]
    by_folder = estimate(source.config, setups)
    by_name = estimate(resolve_config("tiny-qwen2").config, setups)
    assert by_folder == by_name


def test_bad_models_are_refused_with_the_known_names(tmp_path):
    with pytest.raises(ValueError, match=r"known names: gemma-2-9b, .*llama-2-7b"):
        resolve_config("llama-9b")
    with pytest.raises(ValueError, match=r"has no config\.json"):
        resolve_config(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ValueError, match="cannot be read as a model config"):
        resolve_config(str(tmp_path))


def test_the_named_families_are_those_the_issue_asks_for():
    assert set(family_names()) >= {
        "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b",
        "mistral-7b", "qwen2.5-0.5b", "qwen2.5-7b", "gemma-2-9b",
        "smollm2-135m", "smollm2-360m", "smollm2-1.7b",
    }  # fmt: skip


@pytest.mark.parametrize("name", family_names())
def test_every_named_configuration_builds_on_the_meta_device_and_estimates(name):
    (ft, lisa) = estimate(resolve_config(name).config, [Setup("ft", "bf16"), Setup("lisa", "bf16")])
    assert ft["parameter_bytes"] == 2 * ft["num_parameters"]
    assert 0 < lisa["trainable_parameters"] < ft["trainable_parameters"]


# -- published counts -------------------------------------------------------------------------


def test_llama_2_70b_has_its_published_parameter_count():
    (row,) = estimate(resolve_config("llama-2-70b").config, [Setup("ft", "bf16")])
    assert row["num_parameters"] == LLAMA_2_70B_PARAMETERS
    assert row["parameter_bytes"] == 2 * LLAMA_2_70B_PARAMETERS


def test_lisa_on_llama_3_1_8b_trains_what_a_third_party_counted():
    # Soup's H100 record (docs/memory.md): 1,486,901,248 trained = 1,050,677,248 always-on
    # (embedding, head, final norm) + 2 x 218,112,000, i.e. 70.7% in E, H and the final norm.
    (row,) = estimate(resolve_config("llama-3.1-8b").config, [Setup("lisa", "bf16", gamma=2)])
    assert row["trainable_parameters"] == 1_486_901_248
    assert row["trainable_parameters"] * row["embed_head_extras_share"] == pytest.approx(
        1_050_677_248
    )
    assert round(100 * row["embed_head_extras_share"], 1) == 70.7


def test_lisa_on_smollm2_135m_trains_the_embedding_the_issue_names():
    # Issue 11: "on SmolLM2-135M, E is 28.3M of the 35.4M parameters LISA trains with gamma 2".
    (row,) = estimate(resolve_config("smollm2-135m").config, [Setup("lisa", "float32", gamma=2)])
    assert round(row["trainable_parameters"] / 1e6, 1) == 35.4
    assert row["num_parameters"] == 134_515_008  # 134.5M (docs/design.md section 6)


def test_llama_2_7b_estimate_runs_in_a_fresh_process_in_little_memory():
    """The whole default command: every method and precision; time and peak RSS are printed."""
    script = (
        "import contextlib, io, json, time\n"
        "start = time.perf_counter()\n"
        "from lisa_apps.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['estimate', 'llama-2-7b', '--json'])\n"
        # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss at exec.
        "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
        "peak = int(status) * 1024\n"
        "print(json.dumps({'code': code, 'rows': json.loads(out.getvalue()),"
        " 'seconds': time.perf_counter() - start, 'peak_rss': peak}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"llama-2-7b: {result['seconds']:.1f} s, peak RSS {result['peak_rss'] / 2**30:.2f} GiB")
    assert result["code"] == 0 and len(result["rows"]) == 12
    assert {row["num_parameters"] for row in result["rows"]} == {LLAMA_2_7B_PARAMETERS}
    assert result["peak_rss"] < 2 * 2**30  # a generous bound: the meta device holds no weight


# -- suggestions ------------------------------------------------------------------------------


def test_a_suggestion_comes_with_each_cheaper_lisa_setting_when_lisa_exceeds_lora():
    config = resolve_config("llama-3.1-8b").config
    rows = estimate(config, [Setup("lora", "bf16"), Setup("lisa", "bf16")], Workload(1, 128))
    (found,) = suggestions(config, rows, Workload(1, 128))
    assert [what for what, _ in found.options] == ["freeze E", "freeze H", "freeze E+H", "gamma 1"]
    lisa = found.lisa["total_with_activations_bytes"]
    saved = {what: lisa - row["total_with_activations_bytes"] for what, row in found.options}
    # Freezing E (128256 x 4096, bf16) drops its grad and two moments (6 bytes an element) and
    # its 4-byte step; the weight stays, and so do the activations.
    assert saved["freeze E"] == 128256 * 4096 * 6 + 4
    assert saved["freeze E+H"] > saved["freeze E"] > saved["gamma 1"] > 0


def test_no_suggestion_when_lisa_fits_under_lora_and_no_freeze_h_on_a_tied_model():
    config = resolve_config("llama-2-7b").config
    rows = estimate(config, [Setup("lora", "bf16", lora_rank=128), Setup("lisa", "bf16")])
    assert rows[1]["total_with_activations_bytes"] < rows[0]["total_with_activations_bytes"]
    assert suggestions(config, rows) == []
    tied = resolve_config("qwen2.5-0.5b").config
    rows = estimate(tied, [Setup("lora", "bf16"), Setup("lisa", "bf16")])
    (found,) = suggestions(tied, rows)
    assert [what for what, _ in found.options] == ["freeze E", "gamma 1"]
