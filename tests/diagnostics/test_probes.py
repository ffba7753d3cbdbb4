"""run_probe: short LoRA and FT runs on a tiny model with the recorder attached."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from diagnostics.lora import lora_target_modules
from diagnostics.probes import run_probe
from lisa_apps.data import DataCollator

STEPS = 3
COLLATE = DataCollator(pad_token_id=0)


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (12, 10), generator=generator).tolist()
    return [{"input_ids": x, "attention_mask": [1] * 10, "labels": x} for x in ids]


def _state(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def probe(model, features, method="ft", **kwargs):
    return run_probe(model, features, method, collate=COLLATE, progress=False, **kwargs)


def test_ft_probe_records_every_step_and_trains_the_given_model_in_place(tiny_llama, features):
    model = tiny_llama()
    before = _state(model)
    table = probe(model, features, steps=STEPS, lr=1e-2, batch_size=4, kinds=("weight", "delta"))
    assert sorted(table["step"].unique()) == list(range(STEPS + 1))
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all()
    assert (delta.loc[STEPS] > 0).all()
    assert len(table.attrs["losses"]) == STEPS
    after = model.state_dict()
    assert not all(torch.equal(before[name], after[name]) for name in before)


def test_a_model_function_builds_a_fresh_model_that_the_probe_drops(tiny_llama, features):
    built = []

    def build():
        built.append(weakref.ref(model := tiny_llama()))
        return model

    table = probe(build, features, steps=2, lr=1e-2)
    gc.collect()
    assert len(built) == 1 and built[0]() is None  # no copy outlives the probe
    assert len(table.attrs["losses"]) == 2


def test_lora_probe_trains_adapters_only(tiny_llama, features):
    table = probe(
        tiny_llama, features, "lora", steps=STEPS, lr=1e-2, batch_size=4,
        kinds=("trainable", "delta"),
    )  # fmt: skip
    trainable = table[table["kind"] == "trainable"]
    assert set(trainable["group"]) == {f"block.{i}" for i in range(4)}
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all()  # B = 0 at initialisation
    assert (delta.loc[STEPS][[f"block.{i}" for i in range(4)]] > 0).all()
    assert delta.loc[STEPS][["embed", "head", "extras"]].eq(0.0).all()  # frozen


def test_lora_probe_uses_the_default_alpha_of_twice_the_rank(tiny_llama, features):
    table = probe(tiny_llama, features, "lora", steps=1, lora_rank=4)
    settings = table.attrs["sidecar"]["settings"]
    assert (settings["lora_rank"], settings["lora_alpha"]) == (4, 8.0)


def test_probe_is_deterministic_for_a_seed(tiny_llama, features):
    first = probe(tiny_llama(), features, "lora", steps=2, lr=1e-2, seed=3)
    second = probe(tiny_llama(), features, "lora", steps=2, lr=1e-2, seed=3)
    assert first["norm"].tolist() == second["norm"].tolist()
    assert first.attrs["losses"] == second.attrs["losses"]


def test_probe_streams_to_disk(tmp_path, tiny_llama, features):
    from diagnostics.recorder import load_norms

    table = probe(tiny_llama(), features, steps=2, path=tmp_path)
    assert table["norm"].tolist() == load_norms(tmp_path)["norm"].tolist()


def test_untokenized_examples_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="tokenized features"):
        probe(tiny_llama(), [{"instruction": "a", "output": "b"}], steps=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "qlora"}, "method"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_settings_are_refused(tiny_llama, features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        probe(tiny_llama(), features, **kwargs)


def test_bf16_mixed_probe_keeps_float32_weights(tiny_llama, features):
    model = tiny_llama()
    table = probe(model, features, steps=1, precision="bf16-mixed")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert table.attrs["sidecar"]["settings"]["precision"] == "bf16-mixed"


def test_pure_bf16_probe_trains_bfloat16_weights(tiny_llama, features):
    model = tiny_llama()
    probe(model, features, steps=1, precision="bf16", gradient_checkpointing=True)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_lora_targets_are_the_block_linear_layers(tiny_llama, tiny_gpt2):
    names = lora_target_modules(tiny_llama(num_blocks=2))
    assert len(names) == 2 * 7 and all(n.startswith("model.layers.") for n in names)
    assert "lm_head" not in names
    assert len(lora_target_modules(tiny_gpt2(num_blocks=2))) == 2 * 4  # Conv1D layers


def test_lora_probe_on_gpt2_conv1d_layers(tiny_gpt2, features):
    table = probe(tiny_gpt2(), features, "lora", steps=2, lr=1e-2, kinds=("weight", "delta"))
    delta = table[table["kind"] == "delta"].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all() and (delta.loc[2][[f"block.{i}" for i in range(4)]] > 0).all()


# -- the LoRA-EH probe: LoRA whose embedding and head also train in full ----------------------


def test_lora_eh_probe_trains_adapters_and_copies_of_e_and_h_only(tiny_llama, features):
    model = tiny_llama()
    originals = [(p, p.detach().clone()) for p in model.parameters()]  # peft renames, not copies
    table = probe(model, features, "lora-eh", steps=STEPS, lr=1e-2, batch_size=4,
                  kinds=("weight", "trainable", "delta"), reduce=("l2", "rms"))  # fmt: skip
    delta = table[(table["kind"] == "delta") & (table["reduce"] == "l2")]
    last = delta[delta["step"] == STEPS].set_index("group")["norm"]
    assert last["embed"] > 0 and last["head"] > 0 and (last.filter(like="block.") > 0).all()
    assert last["extras"] == 0.0  # the final norm stays frozen
    for parameter, before in originals:  # the frozen originals under the E and H copies too
        assert torch.equal(parameter, before)
    trainable = table[(table["kind"] == "trainable") & (table["step"] == 0)]
    assert {"embed", "head"} <= set(trainable["group"])


def test_lora_eh_weight_norms_count_the_running_copy_once(tiny_llama):
    from diagnostics.lora import wrap_lora
    from diagnostics.norms import layer_norms

    for tie in (False, True):
        model = tiny_llama(tie=tie)
        plain = layer_norms(model, kind="weight", reduce="rms")
        wrapped = wrap_lora(model, rank=2, train_embeddings_and_head=True)
        assert layer_norms(wrapped, kind="weight", reduce="rms").to_dict() == pytest.approx(
            plain.to_dict(), rel=1e-6
        )


def test_lora_eh_keeps_a_tied_embedding_and_head_one_matrix(tiny_llama):
    from diagnostics.lora import wrap_lora

    wrapped = wrap_lora(tiny_llama(tie=True), rank=2, train_embeddings_and_head=True)
    embed = wrapped.get_input_embeddings()
    head = wrapped.get_output_embeddings()
    trained = [p for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n]
    assert len(trained) == 1  # one trainable copy serves as E and as H
    with torch.no_grad():
        trained[0].add_(1.0)
    ids = torch.tensor([[3, 5]])
    assert torch.equal(embed(ids), trained[0][ids])
    assert torch.equal(head.weight if hasattr(head, "weight") else head.modules_to_save["default"].weight,
                       trained[0])  # fmt: skip


def test_diagnose_runs_the_lora_eh_probe_beside_lora_and_ft_when_asked(tmp_path):
    from lisa_apps.data import make_math_problems
    from lisa_apps.models import load_model
    from lisa_apps.pipeline import DiagnoseSettings, diagnose

    _, tokenizer = load_model("tiny-llama")
    settings = DiagnoseSettings(steps=1, batch_size=1, max_length=384, rank=2, progress=False,
                                probes=("lora", "ft", "lora-eh"))  # fmt: skip
    diagnosis = diagnose("tiny-llama", tokenizer, make_math_problems(2), tmp_path / "d", settings)
    assert set(diagnosis.table["method"]) == {"lora", "ft", "lora-eh"}
    assert set(diagnosis.summary["method"]) == {"lora", "ft", "lora-eh"}
    assert diagnosis.policy.provenance["score_source"] == "norm-ratio"
    with pytest.raises(ValueError, match="must include 'lora' and 'ft'"):
        DiagnoseSettings(probes=("lora-eh", "ft"))


def test_lisa_diagnose_refuses_probes_without_lora_and_ft(tmp_path, capsys):
    from lisa_apps.cli import main

    assert main(["diagnose", "--model", "tiny-llama", "--probes", "lora-eh,ft",
                 "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "--probes lora-eh,ft must include lora and ft" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
