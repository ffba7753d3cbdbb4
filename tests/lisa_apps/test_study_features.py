"""A study tokenises its data once: every run trains on the same features, with the same losses."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

import lisa_apps.models as models_module
from lisa.config import LisaConfig
from lisa_apps.data import load_examples, make_math_problems
from lisa_apps.models import load_model, load_tokenizer
from lisa_apps.study import StudyFolder, StudySettings, run_study
from lisa_apps.training import FinetuneConfig, TokenizedData, finetune

TINY = dict(model="tiny-llama", methods=("lisa",), steps=3, batch_size=2, max_length=384,
            train_examples=8, val_examples=2, test_examples=3, accuracy_examples=0,
            max_new_tokens=4, device="cpu", precision="float32", seeds=1,
            lr_factors=(1.0, 2.0))  # fmt: skip


def _config(**changes) -> FinetuneConfig:
    return FinetuneConfig(**{"method": "lisa", "steps": 3, "batch_size": 2, "max_length": 384,
                             "device": "cpu", "precision": "float32", "score_accuracy": False,
                             "lr_scheduler": "constant",  # the study's schedule
                             **changes})  # fmt: skip


def _losses(result) -> list[float]:
    return result.log_history["loss"].dropna().tolist()


def test_features_made_for_another_length_or_tokenizer_are_refused():
    train, test = make_math_problems(4), make_math_problems(2, split="test")
    features = TokenizedData.tokenize(train, test, load_tokenizer("tiny-llama"), max_length=384)
    model, tokenizer = load_model("tiny-llama", seed=0)
    with pytest.raises(ValueError, match=r"tokenised with max_length=384.*the run has max_length=256"):
        finetune(model, tokenizer, train, test, _config(max_length=256), features=features)
    smaller = TokenizedData(features.train, features.held_out, 384, False, len(tokenizer) - 1)
    with pytest.raises(ValueError, match=r"tokenizer of .* tokens, the run's has"):
        finetune(model, tokenizer, train, test, _config(), features=smaller)


def _counting(tokenizer, texts: list):
    """The real tokenizer, recording each text it is asked to tokenise."""

    class Counting(type(tokenizer)):
        def __call__(self, text, *args, **kwargs):
            texts.append(text)
            return super().__call__(text, *args, **kwargs)

    tokenizer.__class__ = Counting
    return tokenizer


def test_a_study_tokenises_each_example_once_and_its_runs_equal_a_run_tokenising_itself(
    tmp_path, monkeypatch
):
    texts: list = []
    real_load_model, real_load_tokenizer = models_module.load_model, models_module.load_tokenizer

    def load_model_counting(*args, **kwargs):
        model, tokenizer = real_load_model(*args, **kwargs)
        return model, _counting(tokenizer, texts)

    monkeypatch.setattr(models_module, "load_model", load_model_counting)
    monkeypatch.setattr(models_module, "load_tokenizer",
                        lambda *a, **k: _counting(real_load_tokenizer(*a, **k), texts))  # fmt: skip
    settings = StudySettings(**TINY)
    result = run_study(settings, StudyFolder(tmp_path / "s", settings.to_dict()).check(),
                       log=lambda _: None, plot=False)  # fmt: skip
    assert result.trained == 2
    # The tiny tokenizer is fast: one call per example (the whole rendered conversation). The
    # study's 8 training, 2 validation and 3 test problems are tokenised once each, not again
    # in each of the 2 runs (which made 8 + 2 + 3 + 2 * (8 + 3) = 35 calls before).
    assert len(texts) == 8 + 2 + 3
    assert max(Counter(texts).values()) == 1

    # The second run, on features the first run had used, again as finetune tokenising its
    # examples itself: the same token ids reach the same arithmetic in this process, so the
    # losses are equal bit for bit whatever the kernels (and no run changed the features).
    monkeypatch.undo()
    pool = load_examples("math", split="train", num_examples=8 + 2, seed=0)
    test = load_examples("math", split="test", num_examples=3, seed=0)
    rate = settings.learning_rates(settings.base_lisa)[1]
    config = _config(learning_rate=rate, seed=0, lisa=LisaConfig(
        gamma=settings.base_lisa.gamma, interval=settings.base_lisa.interval, sampler="uniform",
        seed=0, state_policy="drop", train_embeddings=True, train_head=True,
    ))  # fmt: skip
    model, tokenizer = load_model("tiny-llama", seed=0)
    own = finetune(model, tokenizer, pool[:-2], test, config, progress=False,
                   evaluate_before=False)  # fmt: skip
    run_id = f"lisa-uniform-lr{rate:g}-seed0"
    studied = pd.read_csv(tmp_path / "s" / "runs" / run_id / "log_history.csv")
    assert studied["loss"].dropna().tolist() == _losses(own)
    row = result.runs.set_index("run_id").loc[run_id]
    assert row["test_loss"] == own.metrics["after"]["eval_loss"]
