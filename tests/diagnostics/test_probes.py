"""run_probe: short LoRA and FT runs on a tiny model with the recorder attached."""

from __future__ import annotations

import pytest
import torch

from diagnostics.probes import lora_target_modules, run_probe

STEPS = 3


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (12, 10), generator=generator).tolist()
    return [{"input_ids": x, "attention_mask": [1] * 10, "labels": x} for x in ids]


def _state(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_ft_probe_records_every_step_and_leaves_the_model_alone(tiny_llama, features):
    model = tiny_llama()
    before = _state(model)
    table = run_probe(
        model,
        features,
        "ft",
        steps=STEPS,
        lr=1e-2,
        batch_size=4,
        kinds=("weight", "delta"),
        progress=False,
    )
    assert sorted(table["step"].unique()) == list(range(STEPS + 1))
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all()
    assert (delta.loc[STEPS] > 0).all()
    assert len(table.attrs["losses"]) == STEPS
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_lora_probe_trains_adapters_only_and_leaves_the_model_alone(tiny_llama, features):
    model = tiny_llama()
    table = run_probe(
        model,
        features,
        "lora",
        steps=STEPS,
        lr=1e-2,
        batch_size=4,
        kinds=("trainable", "delta"),
        progress=False,
    )
    trainable = table[table["kind"] == "trainable"]
    assert set(trainable["group"]) == {f"block.{i}" for i in range(4)}
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all()  # B = 0 at initialisation
    assert (delta.loc[STEPS][[f"block.{i}" for i in range(4)]] > 0).all()
    assert delta.loc[STEPS][["embed", "head", "extras"]].eq(0.0).all()  # frozen
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_probe_is_deterministic_for_a_seed(tiny_llama, features):
    first = run_probe(tiny_llama(), features, "lora", steps=2, lr=1e-2, seed=3, progress=False)
    second = run_probe(tiny_llama(), features, "lora", steps=2, lr=1e-2, seed=3, progress=False)
    assert first["norm"].tolist() == second["norm"].tolist()
    assert first.attrs["losses"] == second.attrs["losses"]


def test_probe_tokenizes_raw_examples_and_streams_to_disk(tmp_path):
    from diagnostics.recorder import load_norms
    from lisa.data import load_examples
    from lisa.models import load_model

    model, tokenizer = load_model("tiny-llama")
    examples = load_examples("math", num_examples=8)
    table = run_probe(
        model,
        examples,
        "ft",
        steps=2,
        tokenizer=tokenizer,
        max_length=256,
        progress=False,
        path=tmp_path,
    )
    assert table["norm"].tolist() == load_norms(tmp_path)["norm"].tolist()


def test_untokenized_examples_without_tokenizer_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="tokenizer"):
        run_probe(tiny_llama(), [{"instruction": "a", "output": "b"}], "ft", steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "qlora"}, "method"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_settings_are_refused(tiny_llama, features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_probe(tiny_llama(), features, **{"method": "ft", **kwargs})


def test_lora_targets_are_the_block_linear_layers(tiny_llama, tiny_gpt2):
    names = lora_target_modules(tiny_llama(num_blocks=2))
    assert len(names) == 2 * 7 and all(n.startswith("model.layers.") for n in names)
    assert "lm_head" not in names
    assert len(lora_target_modules(tiny_gpt2(num_blocks=2))) == 2 * 4  # Conv1D layers


def test_lora_probe_on_gpt2_conv1d_layers(tiny_gpt2, features):
    table = run_probe(
        tiny_gpt2(), features, "lora", steps=2, lr=1e-2, kinds=("weight", "delta"), progress=False
    )
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all() and (delta.loc[2][[f"block.{i}" for i in range(4)]] > 0).all()
