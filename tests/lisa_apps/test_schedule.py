"""The schedule options (epochs, scheduler, warm-up, accumulation, decay, clipping) mean the same
in transformers.Trainer and in the plain (FSDP2) loop; bad values are refused naming the field."""

from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Trainer, TrainingArguments

from lisa_apps import cli
from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
from lisa_apps.models import load_model
from lisa_apps.training import FinetuneConfig, finetune
from lisa_apps.training.loop import train_loop
from lisa_apps.training.tracking import TENSORBOARD_FOLDER, TensorBoardWriter


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 5, "epochs": 1.0}, "steps=5 and epochs=1.0 both set"),
        ({"epochs": 0}, "epochs=0 must be a finite number > 0"),
        ({"warmup_steps": -1, "lr_scheduler": "linear"}, "warmup_steps=-1 must be an integer >= 0"),
        ({"warmup_ratio": 1.0, "lr_scheduler": "linear"}, "warmup_ratio=1.0"),
        ({"warmup_steps": 2, "warmup_ratio": 0.1, "lr_scheduler": "linear"}, "give one of them"),
        ({"warmup_steps": 2, "lr_scheduler": "constant"}, "use 'constant_with_warmup'"),
        ({"warmup_ratio": 0.1, "lr_scheduler": "constant"}, "use 'constant_with_warmup'"),
        ({"lr_scheduler": "cosinus"}, "is not a scheduler; use one of linear, cosine,"),
        ({"lr_scheduler": "reduce_lr_on_plateau"}, "needs an evaluation metric"),
        ({"grad_accum": 0}, "grad_accum=0 must be an integer >= 1"),
        ({"max_grad_norm": -1.0}, "max_grad_norm=-1.0 must be a number >= 0"),
        ({"save_steps": 0}, "save_steps=0"),
        ({"report_to": ("tensorbord",)}, "report_to='tensorbord' is not one of"),
    ],
)
def test_config_refuses_bad_schedule_naming_the_field(fields, message):
    with pytest.raises(ValueError) as caught:
        FinetuneConfig(**fields)
    assert message in str(caught.value)


def test_the_default_schedule_is_lisa_defaults_and_a_given_warm_up_or_constant_replaces_its_warm_up():
    from lisa.defaults import DEFAULT_LR_SCHEDULER, DEFAULT_WARMUP_RATIO

    config = FinetuneConfig()
    assert (config.lr_scheduler, config.warmup_ratio, config.warmup_steps) == (
        DEFAULT_LR_SCHEDULER, DEFAULT_WARMUP_RATIO, 0)
    assert config.warmup(300) == 30 and config.warmup(5) == 1  # ceil, as the Trainer counts
    # A schedule without warm-up, or a warm-up given in steps, takes no default ratio.
    assert FinetuneConfig(lr_scheduler="constant").warmup_ratio == 0.0
    assert FinetuneConfig(warmup_steps=3).warmup(300) == 3
    assert FinetuneConfig(lr_scheduler="linear").warmup_ratio == DEFAULT_WARMUP_RATIO
    assert FinetuneConfig(warmup_ratio=0.0).warmup(300) == 0


def test_train_runs_the_default_schedule_and_records_it(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "tiny-llama", "--out", str(out), "--steps", "10",
                     "--batch-size", "2", "--eval-examples", "2", "--no-accuracy",
                     "--no-save-model", "--max-length", "384", "--train-examples", "20"])  # fmt: skip
    assert code == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert (settings["lr_scheduler"], settings["warmup_ratio"]) == ("cosine", 0.1)
    rates = pd.read_csv(out / "log_history.csv")["learning_rate"].dropna().tolist()
    # One warm-up step (ceil(10 * 0.1)) from 0, then a cosine decay from the peak towards 0.
    peak = settings["learning_rate"]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(peak)
    assert all(a > b for a, b in itertools.pairwise(rates[1:]))


def test_steps_default_to_sixty_and_epochs_count_as_the_trainer_counts():
    assert FinetuneConfig().steps == 60
    # 10 examples, batches of 4: 3 batches per epoch (the last partial), 2 accumulations -> 2 steps.
    assert FinetuneConfig(epochs=2, batch_size=4, grad_accum=2).training_steps(10) == 4
    assert FinetuneConfig(epochs=0.5, batch_size=4).training_steps(10) == 2  # ceil(1.5)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "4", "--epochs", "1"], "--steps 4 and --epochs 1 both set the length"),
        (["--warmup-steps", "-2"], "argument --warmup-steps: must be an integer >= 0, got -2"),
        (["--lr-scheduler", "cosinus"], "--lr-scheduler 'cosinus' is not a scheduler; use one of"),
        (["--warmup-steps", "2", "--lr-scheduler", "constant"], "--lr-scheduler 'constant' has no warm-up"),
        (["--warmup-ratio", "1.5", "--lr-scheduler", "linear"], "--warmup-ratio 1.5 is a fraction"),
        (["--save-total-limit", "2"], "--save-total-limit applies with --save-steps"),
        (["--merge"], "--merge applies to --method lora only"),
        (["--report-to", "tensorboard,none"], "--report-to none cannot be combined"),
    ],
)
def test_train_refuses_bad_schedule_flags_with_one_line(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "tiny-llama", "--out", str(out), *flags])
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists()  # refused before any work


def _tags(folder) -> dict[str, list]:
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in tags["scalars"]}
    texts = {  # SummaryWriter.add_text stores TAG as TAG/text_summary
        tag.removesuffix("/text_summary"): [
            e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)
        ]
        for tag in tags["tensors"]
    }
    return scalars | texts


def test_loop_and_trainer_follow_the_same_schedule_and_log_the_same_tags(tmp_path):
    """Epochs, warm-up ratio, cosine decay, accumulation, weight decay: the loop's per-step
    learning rates equal the Trainer's, both decay the same parameters, and both write the
    same TensorBoard tags (loss, learning rate, LISA's active blocks)."""
    model, tokenizer = load_model("tiny-llama")
    train = make_math_problems(6, seed=1)
    held_out = make_math_problems(1, split="test")
    config = FinetuneConfig(
        method="lisa", epochs=2, batch_size=2, grad_accum=2, lr_scheduler="cosine",
        warmup_ratio=0.3, weight_decay=0.1, max_grad_norm=0.5, max_length=256,
        score_accuracy=False, report_to=("tensorboard",),
    )  # fmt: skip
    trainer_run = finetune(
        model, tokenizer, train, held_out, config, out_dir=tmp_path / "trainer", progress=False,
        evaluate_before=False,
    )  # fmt: skip
    trainer_rows = trainer_run.log_history.dropna(subset=["loss"])
    # 6 examples in batches of 2: 3 micro-batches an epoch, 2 optimizer steps (the last takes
    # one micro-batch), so 2 epochs are 4 steps; warm-up ceil(4 * 0.3) = 2 steps.
    assert trainer_rows["step"].tolist() == [1, 2, 3, 4]

    loop_model, _ = load_model("tiny-llama")
    for parameter in loop_model.parameters():
        parameter.requires_grad_(True)
    writer = TensorBoardWriter(tmp_path / "loop")
    features = tokenize_examples(train, tokenizer, max_length=256)
    loop_run = train_loop(
        loop_model, features, DataCollator(tokenizer), config, device=torch.device("cpu"),
        precision="float32", writer=writer,
    )  # fmt: skip
    writer.close()
    # Both paths evaluate the same LambdaLR of transformers.get_scheduler on the same step
    # numbers, so the rates are the same floats: compared exactly.
    assert loop_run.log_history["learning_rate"].tolist() == trainer_rows["learning_rate"].tolist()
    assert trainer_rows["learning_rate"].iloc[0] == 0.0  # the warm-up starts at 0

    def decayed(optimizer, model) -> set[str]:
        names = {id(p): name for name, p in model.named_parameters()}
        return {
            names[id(p)]
            for group in optimizer.param_groups
            if group["weight_decay"] > 0
            for p in group["params"]
        }

    for parameter in loop_model.parameters():  # LISA left blocks frozen; the Trainer skips those
        parameter.requires_grad_(True)
    reference = Trainer(
        model=loop_model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "unused"), weight_decay=0.1, use_cpu=True, report_to=[]
        ),
    )
    trainer_decayed = decayed(reference.create_optimizer(), loop_model)
    assert trainer_decayed == decayed(loop_run.optimizer, loop_model)
    assert trainer_decayed and not any("norm" in name for name in trainer_decayed)

    trainer_tags = _tags(tmp_path / "trainer" / TENSORBOARD_FOLDER)
    loop_tags = _tags(tmp_path / "loop")
    for tag in ("train/loss", "train/learning_rate"):
        assert len(trainer_tags[tag]) == len(loop_tags[tag]) == 4, tag
    # The Trainer's closing summary entry carries LISA's keys too: one more text than steps.
    assert trainer_tags["train/lisa_active_blocks"][:4] == loop_tags["train/lisa_active_blocks"]
    assert trainer_tags["train/learning_rate"] == pytest.approx(loop_tags["train/learning_rate"])
    assert all(blocks.count(",") == 1 for blocks in trainer_tags["train/lisa_active_blocks"])
