"""Tests for lisa/callback.py: LisaCallback inside a real transformers.Trainer (CPU, tiny models)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from lisa.callback import LisaCallback
from lisa.config import LisaConfig
from lisa.samplers import make_sampler

VOCAB = 128


class TokenDataset(torch.utils.data.Dataset):
    """Random token ids; labels equal inputs (causal LM loss)."""

    def __init__(self, num_examples: int = 48, length: int = 8, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (num_examples, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


class ActiveSetRecorder(TrainerCallback):
    """Records, at every micro-batch forward, which blocks require grad."""

    def __init__(self, model):
        self.per_forward = []
        model.model.register_forward_pre_hook(self._record)
        self.blocks = model.model.layers

    def _record(self, module, args):
        if module.training:
            self.per_forward.append(
                tuple(
                    i for i, b in enumerate(self.blocks) if b.self_attn.q_proj.weight.requires_grad
                )
            )


def make_args(output_dir, **overrides) -> TrainingArguments:
    settings = {
        "output_dir": str(output_dir),
        "max_steps": 12,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 7,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def losses_by_step(trainer) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}


@pytest.mark.parametrize("factory", ["tiny_llama", "tiny_gpt2"])
def test_nothing_is_frozen_before_the_trainer_builds_its_optimizer(factory, request, tmp_path):
    model = request.getfixturevalue(factory)()
    callback = LisaCallback(LisaConfig(gamma=1, interval=5))
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, max_steps=2),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    assert callback.lisa is None
    assert all(p.requires_grad for p in model.parameters())
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert [step for step, _ in callback.lisa.history] == [0]
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(p) for p in callback.lisa.trainable_parameters()}


@pytest.mark.numerics
def test_resume_from_checkpoint_reproduces_active_sets_and_losses(tiny_llama, tmp_path):
    config = LisaConfig(gamma=2, interval=5, seed=3)
    whole = LisaCallback(config)
    trainer = Trainer(
        model=tiny_llama(num_blocks=6),
        args=make_args(tmp_path / "whole"),
        train_dataset=TokenDataset(),
        callbacks=[whole],
    )
    trainer.train()
    expected_losses = losses_by_step(trainer)
    assert [step for step, _ in whole.lisa.history] == [0, 5, 10]
    checkpoint = tmp_path / "whole" / "checkpoint-7"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["LisaCallback"]["attributes"]["lisa_state"]["step"] == 7

    resumed = LisaCallback(config)
    trainer = Trainer(
        model=tiny_llama(num_blocks=6, seed=42),  # weights come from the checkpoint
        args=make_args(tmp_path / "resumed"),
        train_dataset=TokenDataset(),
        callbacks=[resumed],
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.lisa.history == whole.lisa.history
    resumed_losses = losses_by_step(trainer)
    assert sorted(resumed_losses) == list(range(1, 13))
    for step in range(8, 13):
        assert resumed_losses[step] == expected_losses[step], step


def test_gradient_accumulation_switches_on_optimizer_steps(tiny_llama, tmp_path):
    model = tiny_llama(num_blocks=6)
    callback = LisaCallback(LisaConfig(gamma=1, interval=2, seed=5))
    recorder = ActiveSetRecorder(model)
    args = make_args(tmp_path, max_steps=6, gradient_accumulation_steps=3, save_strategy="no")
    Trainer(
        model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback, recorder]
    ).train()
    assert [step for step, _ in callback.lisa.history] == [0, 2, 4]
    assert len(recorder.per_forward) == 18
    expected = []
    for _, blocks in callback.lisa.history:
        expected += [blocks] * 6  # 2 optimizer steps x 3 micro-batches per period
    assert recorder.per_forward == expected


def test_logs_carry_active_blocks_and_freed_bytes(tiny_llama, tmp_path):
    callback = LisaCallback(LisaConfig(gamma=2, interval=3))
    trainer = Trainer(
        model=tiny_llama(num_blocks=6),
        args=make_args(tmp_path, max_steps=7, save_strategy="no"),
        train_dataset=TokenDataset(),
        callbacks=[callback],
    )
    trainer.train()
    rows = [row for row in trainer.state.log_history if "loss" in row]
    assert len(rows) == 7
    history = dict(callback.lisa.history)
    for row in rows:
        step = row["step"]  # logged after optimizer step `step`, which ran as step - 1
        blocks = history[3 * ((step - 1) // 3)]
        assert row["lisa_active_blocks"] == ",".join(map(str, blocks))
    freed = [row["lisa_freed_bytes"] for row in rows]
    assert freed[0] == 0  # the first draw frees nothing: no state existed yet
    assert (
        freed[3] > 0 and freed[6] > 0
    )  # switches at steps 3 and 6 freed the leaving blocks' state
    assert freed[1] == freed[2] == freed[4] == freed[5] == 0


def test_checkpointing_and_bf16_autocast_with_frozen_embeddings(tiny_llama, tmp_path):
    model = tiny_llama(num_blocks=4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = LisaConfig(
        gamma=1, sampler=make_sampler("fixed", 4, blocks=(2,)), train_embeddings=False
    )
    callback = LisaCallback(config)
    args = make_args(
        tmp_path, max_steps=3, save_strategy="no", bf16=True, activation_checkpointing=True
    )
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback])
    trainer.train()
    assert model.is_activation_checkpointing
    assert trainer.accelerator.mixed_precision == "bf16"
    assert all(
        torch.isfinite(torch.tensor(row["loss"]))
        for row in trainer.state.log_history
        if "loss" in row
    )
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        if name.startswith(("model.layers.2.", "lm_head", "model.norm")):
            assert changed, name
        else:
            assert not changed, name


def test_restored_callback_from_config_dict(tmp_path):
    callback = LisaCallback(LisaConfig(gamma=3, interval=4))
    rebuilt = LisaCallback(**callback.state()["args"])
    assert rebuilt.config == callback.config
    # A built-in sampler instance is stored by its name and options, so it restores too.
    instance = LisaCallback(LisaConfig(gamma=1, sampler=make_sampler("uniform", 4, gamma=1)))
    restored = LisaCallback(**instance.state()["args"]).config
    assert (restored.sampler, restored.sampler_options) == ("uniform", {"gamma": 1})

    class NoSpec:  # a user's sampler without spec() cannot be written as JSON
        num_blocks, gamma = 4, 1

        def sample(self, rng):
            return (0,)

        def inclusion_probabilities(self):
            return [1.0, 0.0, 0.0, 0.0]

    custom = LisaCallback(LisaConfig(gamma=1, sampler=NoSpec()))
    assert custom.state()["args"]["config"] is None
    with pytest.raises(ValueError, match="restore_callback_states_from_checkpoint"):
        LisaCallback(**custom.state()["args"])
    assert not os.listdir(tmp_path)
