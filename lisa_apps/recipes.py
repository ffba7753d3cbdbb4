"""Recipe files: one YAML mapping of a command's options, read by ``--config`` and written per run.

A recipe's keys are the command's option names, with dashes or underscores (``lr-scheduler``
or ``lr_scheduler``); its values are what the flag takes (``true``/``false`` for a switch, a
list or a comma string for a comma list). Precedence is defaults < recipe < flags: the recipe
becomes command-line tokens placed before the user's own, and argparse keeps the last value of
an option, so every value goes through the same checks as a flag and a flag given on the
command line wins. Unknown keys are refused with the closest valid one.

Every run folder gets ``recipe.yaml``, the run's fully resolved options
(:func:`resolved_recipe`), so ``lisa train --config RUN/recipe.yaml --out NEW`` repeats it.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RECIPE_FILE", "load_recipe", "recipe_arguments", "resolved_recipe"]

RECIPE_FILE = "recipe.yaml"

# Options a recipe cannot hold: how this invocation treats an existing folder belongs to the
# command line, and a recipe names no other recipe.
NOT_IN_RECIPES = frozenset({"overwrite", "resume", "config", "help"})
# Left out of a run's recipe.yaml as well: a repeated run goes to a new --out.
NOT_RECORDED = NOT_IN_RECIPES | {"out", "command", "verbose"}


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML recipe file (ValueError naming the file otherwise)."""
    import yaml

    source = Path(path)
    if not source.is_file():
        raise ValueError(f"--config {path} does not exist; pass a recipe .yaml file")
    try:
        recipe = yaml.safe_load(source.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"--config {path} is not valid YAML{line}; fix the file") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(
            f"--config {path} holds a {type(recipe).__name__}, not a mapping of option: value"
        )
    return recipe


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Recipe key (dest, underscores) -> the long option's action."""
    options = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in NOT_IN_RECIPES and action.dest != argparse.SUPPRESS:
            options[longs[0][2:].replace("-", "_")] = action
    return options


def recipe_arguments(
    recipe: Mapping[str, Any], parser: argparse.ArgumentParser, source: str = "recipe"
) -> list[str]:
    """Command-line tokens for a recipe's values (placed before the user's own flags).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("--lr-scheduler")
        >>> _ = parser.add_argument("--no-accuracy", action="store_true")
        >>> recipe_arguments({"lr_scheduler": "cosine", "no-accuracy": True}, parser)
        ['--lr-scheduler', 'cosine', '--no-accuracy']
        >>> recipe_arguments({"lr_schedule": "cosine"}, parser)
        Traceback (most recent call last):
        ...
        ValueError: recipe: unknown key 'lr_schedule'; did you mean 'lr_scheduler'?
    """
    options = _options(parser)
    tokens: list[str] = []
    for key, value in recipe.items():
        name = str(key).replace("-", "_")
        action = options.get(name)
        if name in NOT_IN_RECIPES:
            raise ValueError(f"{source}: {key!r} belongs on the command line, not in a recipe")
        if action is None:
            close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{source}: unknown key {key!r}{hint}")
        flag = next(s for s in action.option_strings if s.startswith("--"))
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue  # the option's default
        if action.nargs == 0:  # a switch: store_true (or store_false)
            if not isinstance(value, bool):
                raise ValueError(f"{source}: {key}: {value!r} must be true or false")
            if value != action.default:
                tokens.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, dict):  # lisa study's lr_base: {lisa: 4e-4} is lisa=4e-4
            value = ",".join(f"{name}={item}" for name, item in value.items())
        elif isinstance(value, bool):
            value = str(value).lower()
        tokens.extend([flag, str(value)])
    return tokens


def resolved_recipe(args: argparse.Namespace) -> str:
    """The YAML recipe of a parsed command: every option's final value, one key per line.

    Example:
        >>> print(resolved_recipe(argparse.Namespace(steps=8, lr=None, out="run", report_to=("tensorboard",))), end="")
        steps: 8
        lr: null
        report_to:
        - tensorboard
    """
    import yaml

    values = {}
    for name, value in vars(args).items():
        if name.startswith("_") or name in NOT_RECORDED:
            continue
        values[name] = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def add_recipe_option(parser: argparse.ArgumentParser) -> None:
    """``--config RECIPE.yaml`` on ``parser``: the recipe's values under the command line's."""
    if any("--config" in action.option_strings for action in parser._actions):
        return
    parser.add_argument(
        "--config",
        default=None,
        metavar="RECIPE.yaml",
        help="read options from a YAML recipe (keys are option names); flags given here win",
    )
    parse_known_args = parser.parse_known_args

    def parse_with_recipe(args: Sequence[str] | None = None, namespace=None):
        import sys

        tokens = list(sys.argv[1:] if args is None else args)
        path = flag_value(tokens, "--config")
        if path is not None:
            tokens = recipe_arguments(load_recipe(path), parser, f"--config {path}") + tokens
        return parse_known_args(tokens, namespace)

    # A subcommand's parser is asked to parse its own tokens; the recipe goes before them.
    parser.parse_known_args = parse_with_recipe


def flag_value(tokens: Sequence[str], flag: str) -> str | None:
    """The value the last ``flag VALUE`` or ``flag=VALUE`` among ``tokens`` gives, or None."""
    value = None
    for index, token in enumerate(tokens):
        if token == flag and index + 1 < len(tokens):
            value = tokens[index + 1]
        elif token.startswith(f"{flag}="):
            value = token.split("=", 1)[1]
    return value
