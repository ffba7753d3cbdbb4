"""A study's E/H rate variants: lisa-uniform-ehlrF trains the embedding and head at F x the rate."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lisa.config import LisaConfig
from lisa_apps.cli import main
from lisa_apps.data import load_examples
from lisa_apps.models import load_model
from lisa_apps.study import RUN_COLUMNS, StudyFolder, StudySettings, run_study
from lisa_apps.study.runner import _append_row, _read_runs, summarise
from lisa_apps.training import FinetuneConfig, finetune

TINY = dict(model="tiny-llama", methods=("lisa",), steps=2, batch_size=2, max_length=384,
            train_examples=8, val_examples=2, test_examples=3, accuracy_examples=0,
            max_new_tokens=4, device="cpu", precision="float32", seeds=1,
            lr_factors=(1.0,))  # fmt: skip


def test_each_further_factor_adds_one_uniform_lisa_variant():
    settings = StudySettings(methods=("lisa", "ft"), gammas=(2, 8), eh=("trained", "frozen"),
                             eh_lr_factors=(1.0, 0.25, 4.0))  # fmt: skip
    variants = {v.name: v for v in settings.variants()}
    assert list(variants) == ["lisa-uniform", "lisa-uniform-gamma8", "lisa-uniform-eh-frozen",
                              "lisa-uniform-ehlr0.25", "lisa-uniform-ehlr4", "ft"]  # fmt: skip
    quarter = variants["lisa-uniform-ehlr0.25"]
    assert (quarter.eh_lr_factor, quarter.gamma, quarter.train_eh) == (0.25, 2, True)
    assert variants["lisa-uniform-gamma8"].eh_lr_factor == 1.0
    assert quarter.row()["eh_lr_factor"] == 0.25 and variants["ft"].row()["eh_lr_factor"] is None
    # The sweep is the method's, as for every LISA variant: the factor scales E/H within a run.
    assert settings.learning_rates(quarter) == settings.learning_rates(settings.base_lisa)
    # A base factor other than 1 is the base's; frozen E/H take no rate, so no factor.
    based = StudySettings(eh=("trained", "frozen"), eh_lr_factors=(0.5,))
    assert based.base_lisa.eh_lr_factor == 0.5
    assert [v.eh_lr_factor for v in based.variants() if v.method == "lisa"] == [0.5, 1.0]
    # Old study folders resume: at the default the setting is not in the manifest.
    assert "eh_lr_factors" not in StudySettings().to_dict()
    assert settings.to_dict()["eh_lr_factors"] == [1.0, 0.25, 4.0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eh_lr_factors": (1.0, 0.0)}, "eh_lr_factors=0.0 must be a finite number > 0"),
        ({"eh_lr_factors": (1.0, -0.5)}, "eh_lr_factors=-0.5 must be a finite number > 0"),
        ({"eh_lr_factors": ()}, "eh_lr_factors is empty"),
        ({"eh_lr_factors": (1.0, 1.0)}, "repeats a value"),
        ({"methods": ("ft",), "eh_lr_factors": (1.0, 0.25)}, "eh_lr_factors apply to LISA"),
        ({"eh": ("frozen",), "eh_lr_factors": (1.0, 0.25)}, "put 'trained' first in eh"),
    ],
)
def test_settings_refuse_bad_factors(changes, message):
    with pytest.raises(ValueError, match=message):
        StudySettings(**changes)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eh-lr-factors", "1,0"], "argument --eh-lr-factors: must be a number > 0, got 0"),
        (["--eh-lr-factors", "1,-0.5"], "argument --eh-lr-factors: must be a number > 0, got -0.5"),
        (["--eh-lr-factors", "1,1"], "argument --eh-lr-factors: '1,1' repeats a value"),
        (["--methods", "ft", "--eh-lr-factors", "1,0.25"],
         "--eh-lr-factors applies only to LISA runs; drop it or add lisa to --methods"),
        (["--eh", "frozen", "--eh-lr-factors", "1,0.25"], "put trained first in --eh"),
    ],
)  # fmt: skip
def test_the_command_refuses_bad_factors_in_one_line(tmp_path, capsys, extra, message):
    command = ["study", "--model", "tiny-llama", "--out", str(tmp_path / "out"), *extra]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("lisa study: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_ehlr_run_trains_embedding_and_head_at_the_factor_times_its_rate(tmp_path):
    settings = StudySettings(**TINY, eh_lr_factors=(1.0, 0.25))
    result = run_study(settings, StudyFolder(tmp_path / "s", settings.to_dict()).check(),
                       log=lambda _: None, plot=False)  # fmt: skip
    assert result.trained == 2
    rate = settings.learning_rates(settings.base_lisa)[0]
    runs = result.runs.set_index("variant")
    assert list(result.runs.columns) == list(RUN_COLUMNS)
    assert runs.loc["lisa-uniform", "eh_lr_factor"] == 1.0
    assert runs.loc["lisa-uniform-ehlr0.25", "eh_lr_factor"] == 0.25
    assert result.summary.set_index("variant").loc["lisa-uniform-ehlr0.25", "eh_lr_factor"] == 0.25
    run_id = f"lisa-uniform-ehlr0.25-lr{rate:g}-seed0"
    recorded = json.loads((tmp_path / "s" / "runs" / run_id / "metrics.json").read_text())
    assert recorded["settings"]["lr_embed"] == recorded["settings"]["lr_head"] == 0.25 * rate
    assert recorded["settings"]["learning_rate"] == rate and recorded["settings"]["lr_extras"] is None

    # The same run as `finetune` with lr_embed and lr_head given directly: the same token ids
    # reach the same arithmetic in this process, so the losses are equal bit for bit whatever
    # the kernels. The base run (E/H at the rate) differs from the second step on, so a variant
    # that left E/H at the rate would fail here.
    pool = load_examples("math", split="train", num_examples=8 + 2, seed=0)
    test = load_examples("math", split="test", num_examples=3, seed=0)
    base = settings.base_lisa
    config = FinetuneConfig(
        method="lisa", steps=2, batch_size=2, max_length=384, device="cpu", precision="float32",
        score_accuracy=False, learning_rate=rate, seed=0, lr_embed=0.25 * rate,
        lr_scheduler="constant",  # the study's schedule unless one is given
        lr_head=0.25 * rate, lisa=LisaConfig(
            gamma=base.gamma, interval=base.interval, sampler="uniform", seed=0,
            state_policy="drop", train_embeddings=True, train_head=True,
        ),
    )  # fmt: skip
    model, tokenizer = load_model("tiny-llama", seed=0)
    direct = finetune(model, tokenizer, pool[:-2], test, config, progress=False,
                      evaluate_before=False)  # fmt: skip

    def losses(variant: str) -> list[float]:
        path = tmp_path / "s" / "runs" / f"{variant}-lr{rate:g}-seed0" / "log_history.csv"
        return pd.read_csv(path)["loss"].dropna().tolist()

    assert losses("lisa-uniform-ehlr0.25") == direct.log_history["loss"].dropna().tolist()
    assert runs.loc["lisa-uniform-ehlr0.25", "test_loss"] == direct.metrics["after"]["eval_loss"]
    assert losses("lisa-uniform")[1] != losses("lisa-uniform-ehlr0.25")[1]


def test_a_study_started_before_the_column_keeps_its_runs_csv_and_summarises(tmp_path):
    # A study folder written before eh_lr_factor existed: its header lacks the column, and its
    # manifest lacks the setting (to_dict leaves it out at the default, so resuming matches).
    settings = StudySettings(**TINY)
    variant = settings.base_lisa
    row = {c: 0.5 for c in RUN_COLUMNS} | variant.row() | {"run_id": "r0", "seed": 0,
                                                            "learning_rate": 1e-4}  # fmt: skip
    old_columns = [c for c in RUN_COLUMNS if c != "eh_lr_factor"]
    first = ",".join(old_columns) + "\n" + ",".join(str(row[c]) for c in old_columns) + "\n"
    with StudyFolder(tmp_path / "old", settings.to_dict()).check() as folder:
        folder.write_text("runs.csv", first)
        _append_row(folder, row | {"run_id": "r1", "seed": 1})
        text = (folder.path / "runs.csv").read_text()
        runs = _read_runs(folder)
    assert text.startswith(first) and text.count("\n") == 3
    assert text.splitlines()[0] == ",".join(old_columns)
    assert runs["eh_lr_factor"].tolist() == [1.0, 1.0]
    summary = summarise(runs, {variant.name: 1e-4}, variant.name)
    assert summary["eh_lr_factor"].tolist() == [1.0] and summary["num_seeds"].tolist() == [2]
