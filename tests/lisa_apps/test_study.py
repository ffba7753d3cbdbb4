"""run_study on a tiny model: the grid, one data order per seed, and resumption after Ctrl-C."""

from __future__ import annotations

import pandas as pd
import pytest

import lisa_apps.study.runner as runner_module
import lisa_apps.training.runner as training_runner
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa_apps.data import DataCollator
from lisa_apps.outputs import OutputError
from lisa_apps.study import RUN_COLUMNS, StudyFolder, StudySettings, run_study

LISA_LR, LORA_LR = DEFAULT_LEARNING_RATES["lisa"], DEFAULT_LEARNING_RATES["lora"]

TINY = dict(model="tiny-llama", steps=2, batch_size=2, max_length=128, train_examples=12,
            val_examples=4, test_examples=4, accuracy_examples=2, max_new_tokens=4,
            device="cpu", precision="float32")  # fmt: skip


def test_the_grid_adds_one_uniform_lisa_variant_per_further_knob_value():
    settings = StudySettings(methods=("lisa", "lora", "ft"), policies=("uniform", "grad-norm"),
                             gammas=(2, 8), intervals=(5, 20), state_policies=("drop", "keep"),
                             eh=("trained", "frozen"), lr_factors=(1.0, 2.0))  # fmt: skip
    names = [v.name for v in settings.variants()]
    assert names == ["lisa-uniform", "lisa-grad-norm", "lisa-uniform-gamma8", "lisa-uniform-K20",
                     "lisa-uniform-keep", "lisa-uniform-eh-frozen", "lora-r8", "ft"]  # fmt: skip
    gamma8 = settings.variants()[2]
    assert (gamma8.gamma, gamma8.interval, gamma8.state_policy, gamma8.train_eh) == (8, 5, "drop", True)
    assert settings.learning_rates(gamma8) == (LISA_LR, 2 * LISA_LR)
    with pytest.raises(ValueError, match="tune_seeds=4 is more than seeds=3"):
        StudySettings(tune_seeds=4)
    with pytest.raises(ValueError, match="policies apply to LISA"):
        StudySettings(methods=("ft",), policies=("grad-norm",))


def test_lr_base_centres_every_variant_of_its_method_and_only_it():
    settings = StudySettings(methods=("lisa", "lora"), gammas=(2, 4), presets=("badam",),
                             lr_factors=(0.5, 1.0), lr_base={"lisa": 1e-3})  # fmt: skip
    sweeps = {v.name: settings.learning_rates(v) for v in settings.variants()}
    assert sweeps == {"lisa-uniform": (5e-4, 1e-3), "lisa-uniform-gamma4": (5e-4, 1e-3),
                      "badam": (5e-4, 1e-3), "lora-r8": (LORA_LR / 2, LORA_LR)}  # fmt: skip
    assert settings.to_dict()["lr_base"] == {"lisa": 1e-3}
    assert "lr_base" not in StudySettings().to_dict()  # a study without it resumes as before
    with pytest.raises(ValueError, match="lr_base names 'ft', which is not among"):
        StudySettings(methods=("lisa",), lr_base={"ft": 1e-5})
    with pytest.raises(ValueError, match="lr_base"):
        StudySettings(lr_base={"lisa": -1.0})


def test_every_method_sees_the_same_data_order_at_a_seed(tmp_path, monkeypatch):
    collators = []

    class Recording(DataCollator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.batches = []
            collators.append(self)

        def __call__(self, features):
            self.batches.append([tuple(f["input_ids"]) for f in features])
            return super().__call__(features)

    monkeypatch.setattr(training_runner, "DataCollator", Recording)
    settings = StudySettings(methods=("ft", "lora", "lisa"), seeds=2, lr_factors=(1.0,),
                             **TINY | {"accuracy_examples": 0})  # fmt: skip
    result = run_study(settings, StudyFolder(tmp_path / "s", settings.to_dict()).check(),
                       log=lambda _: None, plot=False)  # fmt: skip
    assert result.runs["run_id"].tolist() == [
        "ft-lr5e-05-seed0", f"lora-r8-lr{LORA_LR:g}-seed0", f"lisa-uniform-lr{LISA_LR:g}-seed0",
        "ft-lr5e-05-seed1", f"lora-r8-lr{LORA_LR:g}-seed1", f"lisa-uniform-lr{LISA_LR:g}-seed1",
    ]  # fmt: skip
    # The data loader may collate one batch ahead; the trained ones are the first `steps`.
    orders = [c.batches[: TINY["steps"]] for c in collators]
    assert len(orders) == 6 and all(len(order) == TINY["steps"] for order in orders)
    assert orders[0] == orders[1] == orders[2]
    assert orders[3] == orders[4] == orders[5]
    assert orders[0] != orders[3]


def test_an_interrupted_study_resumes_without_training_finished_runs_again(tmp_path, monkeypatch):
    settings = StudySettings(methods=("lisa",), seeds=2, tune_seeds=1, lr_factors=(1.0, 2.0), **TINY)
    out = tmp_path / "study"
    real = runner_module._train_one
    calls = []

    def interrupt_second(settings, run, *args):
        calls.append(run.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(settings, run, *args)

    monkeypatch.setattr(runner_module, "_train_one", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_study(settings, StudyFolder(out, settings.to_dict()).check(), log=lambda _: None)
    first = pd.read_csv(out / "runs.csv")
    assert first["run_id"].tolist() == [f"lisa-uniform-lr{LISA_LR:g}-seed0"]
    assert '"status": "interrupted"' in (out / "lisa-run.json").read_text()

    calls.clear()
    monkeypatch.setattr(runner_module, "_train_one", lambda *a: calls.append(a[1].run_id) or real(*a))
    lines = []
    folder = StudyFolder(out, settings.to_dict()).check()
    assert folder.resuming
    result = run_study(settings, folder, log=lines.append)
    assert calls == [f"lisa-uniform-lr{2 * LISA_LR:g}-seed0", f"lisa-uniform-lr{result.chosen_rates['lisa-uniform']:g}-seed1"]
    assert result.trained == 2 and len(result.runs) == 3
    assert list(result.runs.columns) == list(RUN_COLUMNS)
    pd.testing.assert_frame_equal(result.runs.iloc[:1], first, check_dtype=False)
    assert any("1 finished runs are kept" in line for line in lines)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(result.runs["run_id"])

    with pytest.raises(OutputError, match="holds a study with other settings \\(seeds: 2 there, 3 now\\)"):
        changed = StudySettings(methods=("lisa",), seeds=3, tune_seeds=1, lr_factors=(1.0, 2.0), **TINY)
        StudyFolder(out, changed.to_dict()).check()
