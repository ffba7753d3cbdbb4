"""Recipes: `--config RECIPE.yaml` on every command with an --out (defaults < recipe < flags),
unknown keys refused with the closest one, the shipped recipes valid, and a run's own
recipe.yaml repeats it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lisa_apps import cli
from lisa_apps.recipes import RECIPE_FILE, load_recipe, resolved_recipe

ROOT = Path(__file__).resolve().parents[2]
# accelerate-*.yaml are accelerate configs for the Trainer examples, not `lisa train` recipes.
SHIPPED = sorted(
    p
    for p in (ROOT / "examples" / "recipes").glob("*.yaml")
    if not p.name.startswith("accelerate-")
)


def parse(command: str, argv: list[str]):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    importlib.import_module(f"lisa_apps.commands.{command}").configure(subparsers.choices[command])
    return parser.parse_args([command, *argv])


def write_recipe(folder: Path, values: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_shipped_recipes_exist_and_every_key_is_a_valid_train_option():
    assert {p.name for p in SHIPPED} >= {
        "smollm2-chat.yaml", "llama2-7b-lisa.yaml", "llama2-7b-lisa-fsdp2.yaml",
    }  # fmt: skip
    for path in SHIPPED:
        recipe = load_recipe(path)
        args = parse("train", ["--config", str(path), "--out", "unused"])  # types checked too
        for key, value in recipe.items():
            parsed = getattr(args, key.replace("-", "_"))
            expected = tuple(value.split(",")) if key == "report_to" else value
            assert parsed == expected, (path.name, key)
        assert path.read_text().startswith("#"), f"{path.name} says where its settings come from"


def test_recipe_overrides_defaults_and_flags_override_the_recipe(tmp_path):
    recipe = write_recipe(
        tmp_path, {"steps": 7, "lr-scheduler": "linear", "warmup_ratio": 0.2, "no_accuracy": True}
    )
    args = parse("train", ["--config", str(recipe), "--out", "x", "--steps", "3"])
    assert (args.steps, args.lr_scheduler, args.warmup_ratio, args.no_accuracy) == (
        3, "linear", 0.2, True,
    )  # fmt: skip
    # Without the recipe: unset, so that FinetuneConfig takes lisa.defaults' schedule.
    assert parse("train", ["--out", "x"]).lr_scheduler is None
    # A flag before --config wins as well: the recipe goes before every command-line token.
    assert parse("train", ["--steps", "2", "--config", str(recipe), "--out", "x"]).steps == 2


@pytest.mark.parametrize(
    ("command", "values"),
    [("diagnose", {"steps": 7, "seed": 3}), ("study", {"steps": 7}),
     ("study", {"lr_base": {"lisa": 4e-4, "lora": 1e-3}})],
)
def test_diagnose_and_study_take_a_recipe(command, values, tmp_path):
    args = parse(command, ["--config", str(write_recipe(tmp_path, values)), "--out", "x"])
    assert {key: getattr(args, key) for key in values} == values


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"lr_sheduler": "cosine"}, "unknown key 'lr_sheduler'; did you mean 'lr_scheduler'?"),
        ({"overwrite": True}, "'overwrite' belongs on the command line"),
        ({"steps": 0}, "argument --steps: must be an integer >= 1, got 0"),
        ({"no_accuracy": "yes"}, "no_accuracy: 'yes' must be true or false"),
        (["steps", 3], "holds a list, not a mapping"),
    ],
)
def test_bad_recipes_are_refused_with_one_line(recipe, message, tmp_path, capsys):
    path = write_recipe(tmp_path, recipe)
    code = cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "run").exists()


def test_a_run_repeated_from_its_recipe_gives_the_same_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped recipe names its chat file relative to the repository
    first, again = tmp_path / "first", tmp_path / "again"
    shipped = ["--config", "examples/recipes/smollm2-chat.yaml"]
    small = ["--model", "tiny-llama", "--epochs", "0.25", "--skip-before"]
    assert cli.main(["train", *shipped, *small, "--out", str(first)]) == 0
    recorded = load_recipe(first / RECIPE_FILE)
    assert recorded["model"] == "tiny-llama" and recorded["epochs"] == 0.25  # the flags won
    assert recorded["data_format"] == "messages" and recorded["steps"] is None
    assert cli.main(["train", "--config", str(first / RECIPE_FILE), "--out", str(again)]) == 0
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (first, again)]
    for key in ("settings", "after", "train_loss_first", "train_loss_last", "steps"):
        assert metrics[0][key] == metrics[1][key], key
    losses = [pd.read_csv(out / "log_history.csv")["loss"].dropna().tolist() for out in (first, again)]
    assert losses[0] == losses[1] and len(losses[0]) == metrics[0]["steps"]



def test_a_diagnose_recipe_repeats_the_checked_options(tmp_path):
    """What `lisa diagnose` writes to recipe.yaml (its options after checking) parses and checks
    again to the same options (tests/lisa_apps/commands/test_diagnose.py sees the file written)."""
    from lisa_apps.commands import diagnose

    argv = ["--model", "tiny-llama", "--steps", "3", "--num-examples", "24", "--gamma", "2"]
    first = parse("diagnose", [*argv, "--out", str(tmp_path / "a")])
    diagnose.prepare(first)
    recipe = tmp_path / RECIPE_FILE
    recipe.write_text(resolved_recipe(first))
    again = parse("diagnose", ["--config", str(recipe), "--out", str(tmp_path / "b")])
    diagnose.prepare(again)
    ignored = ("out", "config")
    assert {k: v for k, v in vars(again).items() if k not in ignored} == {
        k: v for k, v in vars(first).items() if k not in ignored
    }
