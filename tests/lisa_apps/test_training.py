"""Tests for lisa_apps.training: one runner for LISA, LoRA and FT on a tiny model."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from diagnostics.lora import wrap_lora
from diagnostics.plots import plot_loss_curve
from lisa.config import LisaConfig
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa.memory import minimum_optimizer_state_bytes
from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
from lisa_apps.models import load_model
from lisa_apps.outputs import MANIFEST, OutputError
from lisa_apps.training import FinetuneConfig, evaluate_loss, finetune, generate_answers

TRAIN = make_math_problems(12, seed=0)
EVAL = make_math_problems(3, seed=0, split="test")


def tiny_config(method: str, **overrides) -> FinetuneConfig:
    settings = {
        "method": method,
        "steps": 4,
        "max_length": 384,
        "max_new_tokens": 8,
        "eval_batch_size": 2,
    }
    if method == "lisa":
        settings["lisa"] = LisaConfig(gamma=1, interval=2, seed=0)
    return FinetuneConfig(**{**settings, **overrides})


@pytest.mark.parametrize("method", ["lisa", "lora", "ft"])
def test_each_method_trains_scores_and_writes_its_files(method, tmp_path):
    model, tokenizer = load_model("tiny-llama")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = finetune(
        model, tokenizer, TRAIN, EVAL, tiny_config(method), out_dir=tmp_path, progress=False
    )

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["model"] == "tiny-llama"
    assert metrics["settings"]["learning_rate"] == DEFAULT_LEARNING_RATES[method]
    for stage in ("before", "after"):
        assert math.isfinite(metrics[stage]["eval_loss"])
        assert metrics[stage]["num_scored"] == len(EVAL)
        assert 0.0 <= metrics[stage]["accuracy"] <= 1.0
    # Four steps at these rates lower the held-out loss of a random model.
    assert metrics["after"]["eval_loss"] < metrics["before"]["eval_loss"]
    assert all(math.isfinite(x) for x in result.log_history["loss"].dropna())
    assert result.log_history["loss"].notna().sum() == 4
    for name in (
        "log_history.csv",
        "predictions_before.csv",
        "predictions_after.csv",
        "loss_curve.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(pd.read_csv(tmp_path / "predictions_after.csv")) == len(EVAL)
    # The state the Trainer's AdamW held at the end is exactly that of what trains then
    # (for LISA: E, H, extras and the last draw's blocks; the engine freed the rest).
    still_training = [p for p in result.model.parameters() if p.requires_grad]
    assert metrics["optimizer_state_bytes"] == minimum_optimizer_state_bytes(still_training)

    if method == "lora":
        # Base weights frozen; only the adapters (all 7 linear layers of the 4 blocks) train.
        assert metrics["trainable_parameters"] == sum(
            p.numel() for n, p in result.model.named_parameters() if "lora_" in n
        )
        for name, p in result.model.get_base_model().named_parameters():
            if "lora_" not in name:
                assert torch.equal(p.detach(), before[name.replace("base_layer.", "")]), name
        return
    changed = {
        n for n, p in result.model.named_parameters() if not torch.equal(p.detach(), before[n])
    }
    if method == "ft":
        assert changed == set(before)
        assert not (tmp_path / "active_sets.json").exists()
        return
    history = json.loads((tmp_path / "active_sets.json").read_text())
    assert [entry["step"] for entry in history] == [0, 2]
    assert all(len(entry["active_blocks"]) == 1 for entry in history)
    untouched = set(range(4)) - {b for entry in history for b in entry["active_blocks"]}
    assert not any(name.startswith(f"model.layers.{b}.") for name in changed for b in untouched)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= changed


def test_same_config_and_seed_give_identical_runs():
    losses = []
    for _ in range(2):
        model, tokenizer = load_model("tiny-gpt2")
        result = finetune(
            model,
            tokenizer,
            TRAIN,
            EVAL,
            tiny_config("lisa", steps=3),
            progress=False,
            evaluate_before=False,
        )
        losses.append(result.log_history["loss"].dropna().tolist())
        assert "before" not in result.metrics
    assert losses[0] == losses[1]


def test_held_out_loss_does_not_depend_on_batching():
    model, tokenizer = load_model("tiny-llama")
    features = tokenize_examples(make_math_problems(5, seed=3), tokenizer, max_length=384)
    collate = DataCollator(tokenizer)
    one = evaluate_loss(model, features, collate, batch_size=1)
    three = evaluate_loss(model, features, collate, batch_size=3)
    assert one == pytest.approx(three, rel=1e-5)
    # Reference: HF's own mean loss on a single unpadded example.
    single = evaluate_loss(model, features[:1], collate)
    batch = collate(features[:1])
    with torch.no_grad():
        reference = model(**batch).loss.item()
    assert single == pytest.approx(reference, rel=1e-5)


def test_batched_left_padded_generation_matches_one_by_one():
    model, tokenizer = load_model("tiny-qwen2")
    examples = [
        {"instruction": "Hi", "answer": "3"},
        {"instruction": "A much longer question about apples and pears?", "answer": None},
        {"instruction": "What is 2+2?", "answer": "4"},
    ]
    batched = generate_answers(model, tokenizer, examples, batch_size=3, max_new_tokens=6)
    single = generate_answers(model, tokenizer, examples, batch_size=1, max_new_tokens=6)
    assert batched["generated"].tolist() == single["generated"].tolist()
    correct = batched["correct"].tolist()
    assert correct[1] is None  # no reference answer: not scored
    for index in (0, 2):
        assert correct[index] == (batched["predicted"][index] == examples[index]["answer"])


@pytest.mark.parametrize(
    ("name", "per_block"), [("tiny-llama", 7), ("tiny-gpt2", 4), ("tiny-qwen2", 7)]
)
def test_lora_adapts_every_linear_layer_of_the_blocks_and_nothing_else(name, per_block):
    model, _ = load_model(name)
    wrapped = wrap_lora(model, rank=2)
    adapted = [n for n, module in wrapped.named_modules() if hasattr(module, "lora_A")]
    assert len(adapted) == 4 * per_block
    assert all(".h." in n or ".layers." in n for n in adapted)  # inside the blocks only
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # B starts at zero: the wrapped model computes exactly what the base model did.
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(
        wrapped(input_ids=ids).logits, wrapped.get_base_model()(input_ids=ids).logits
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "sgd"}, "method='sgd'"),
        ({"steps": 0}, "steps=0"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0"),
        ({"method": "ft", "lisa": LisaConfig()}, "method='ft'"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
        ({"max_length": 1}, "max_length=1"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        FinetuneConfig(**overrides)


def test_config_defaults_follow_the_method():
    assert FinetuneConfig(method="ft").resolved_learning_rate == DEFAULT_LEARNING_RATES["ft"]
    assert FinetuneConfig(method="lisa", learning_rate=1e-3).resolved_learning_rate == 1e-3
    assert FinetuneConfig(method="lisa", seed=5).resolved_lisa.seed == 5
    assert FinetuneConfig(method="lora", lora_rank=4).to_dict()["lora_alpha"] == 8


def test_plot_loss_curve_writes_a_png_and_rejects_history_without_loss(tmp_path):
    history = [
        {"step": s, "loss": 3.0 / s, "method": m} for s in range(1, 6) for m in ("lisa", "ft")
    ]
    path = tmp_path / "plots" / "loss.png"
    figure = plot_loss_curve(history, path)
    assert sorted(text.get_text() for text in figure.axes[0].get_legend().get_texts()) == ["ft", "lisa"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'step' and 'loss'"):
        plot_loss_curve([{"step": 1, "eval_loss": 2.0}], tmp_path / "x.png")


def test_loss_only_evaluation_skips_generation(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    config = tiny_config("ft", steps=1, score_accuracy=False)
    result = finetune(model, tokenizer, TRAIN, EVAL, config, out_dir=tmp_path, progress=False)
    assert result.metrics["after"]["accuracy"] is None
    assert result.metrics["after"]["num_scored"] == 0
    assert math.isfinite(result.metrics["after"]["eval_loss"])
    assert not (tmp_path / "predictions_after.csv").exists()


def test_run_folder_records_the_files_and_a_second_run_is_refused(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    out = tmp_path / "run"
    result = finetune(
        model, tokenizer, TRAIN, EVAL, tiny_config("lisa", steps=1), out_dir=out, progress=False,
        save_model=True,
    )  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "finished"
    assert sorted(manifest["files"]) == sorted(result.files)
    assert {"metrics.json", "active_sets.json", "model"} <= set(result.files)
    reloaded, _ = load_model(str(out / "model"))  # the saved model loads as a model folder
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in result.model.parameters()
    )
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    model, tokenizer = load_model("tiny-llama")
    with pytest.raises(OutputError, match="already holds a run's results"):
        finetune(model, tokenizer, TRAIN, EVAL, tiny_config("ft", steps=1), out_dir=out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_overwrite_replaces_an_earlier_run_without_mixing_its_files(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    finetune(model, tokenizer, TRAIN, EVAL, tiny_config("lisa", steps=1), out_dir=tmp_path,
             progress=False)  # fmt: skip
    (tmp_path / "notes.txt").write_text("mine")  # a user's own file is never touched
    model, tokenizer = load_model("tiny-llama")
    finetune(model, tokenizer, TRAIN, EVAL, tiny_config("ft", steps=1), out_dir=tmp_path,
             overwrite=True, progress=False)  # fmt: skip
    assert not (tmp_path / "active_sets.json").exists()  # the LISA run's file went with it
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "ft"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_metrics_report_peak_memory_precision_and_device():
    model, tokenizer = load_model("tiny-llama")
    config = tiny_config("lisa", steps=1, precision="bf16-mixed", gradient_checkpointing=True)
    metrics = finetune(model, tokenizer, TRAIN, EVAL, config, progress=False).metrics
    assert metrics["precision"] == "bf16-mixed" and metrics["device"] == "cpu"
    assert metrics["peak_memory_bytes"] > 0 and "RSS" in metrics["peak_memory_measure"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_pure_bfloat16_run_keeps_weights_and_optimizer_state_in_bfloat16():
    model, tokenizer = load_model("tiny-llama")
    config = tiny_config("ft", steps=1, precision="bf16", score_accuracy=False)
    result = finetune(model, tokenizer, TRAIN, EVAL, config, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in result.model.parameters())
    assert result.metrics["optimizer_state_bytes"] == minimum_optimizer_state_bytes(
        result.model.parameters()
    )
