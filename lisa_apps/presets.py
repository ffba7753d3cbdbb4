"""Presets: the settings of BAdam, OwLore and the LISA paper as ``lisa train --preset NAME``.

A preset is data: the ``lisa train`` options it sets, the source's own settings as published,
and what differs from the source here. Precedence is defaults < preset < recipe (``--config``)
< flags: the preset's values become command-line tokens placed before everything else, so an
option given in a recipe or on the command line wins (``--preset badam --interval 10``) and
every value goes through the same checks as a flag. A switch a preset turns on
(``--freeze-embeddings``) cannot be turned off again. See docs/presets.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Preset", "available_presets", "check_preset_policy", "get_preset", "register_preset"]


@dataclass(frozen=True)
class Preset:
    """One source's settings, as ``lisa train`` options.

    Attributes:
        name: the ``--preset`` name.
        source: the paper or code it follows (title, authors, year; repository name).
        options: ``lisa train`` option -> value (keys as in a recipe: ``gamma``, ``lr``, ...).
        source_settings: the source's own settings, under the source's names.
        differences: what this preset does differently from the source, and why.
        needs_policy: the score source a ``--policy`` must come from (None: no policy).
    """

    name: str
    source: str
    options: Mapping[str, Any]
    source_settings: Mapping[str, Any]
    differences: tuple[str, ...] = ()
    needs_policy: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "source_settings", MappingProxyType(dict(self.source_settings)))


_PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to the registry; a name already taken is refused.

    Example:
        >>> register_preset(get_preset("badam"))
        Traceback (most recent call last):
        ...
        ValueError: a preset named 'badam' is already registered; choose another name
    """
    if preset.name in _PRESETS:
        raise ValueError(
            f"a preset named {preset.name!r} is already registered; choose another name"
        )
    _PRESETS[preset.name] = preset
    return preset


def available_presets() -> tuple[str, ...]:
    """The registered preset names, in registration order.

    Example:
        >>> available_presets()
        ('badam', 'owlore', 'lisa-paper')
    """
    return tuple(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError listing the names otherwise)."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(
            f"--preset {name!r} is not one of {', '.join(available_presets())}"
        ) from None


def preset_arguments(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line tokens of a preset's options (placed before every other token).

    Example:
        >>> from lisa_apps.commands import train
        >>> parser = argparse.ArgumentParser()
        >>> train.configure(parser)
        >>> preset_arguments("lisa-paper", parser)
        ['--gamma', '2', '--interval', '20']
    """
    from lisa_apps.recipes import recipe_arguments

    return recipe_arguments(get_preset(name).options, parser, f"--preset {name}")


def add_preset_option(parser: argparse.ArgumentParser) -> None:
    """``--preset NAME`` on ``parser``; call it before :func:`lisa_apps.recipes.add_recipe_option`
    so that a recipe's values (and a recipe's ``preset:``) sit above the preset's."""
    parser.add_argument(
        "--preset",
        choices=available_presets(),
        default=None,
        help="start from a published method's settings (docs/presets.md): "
        + "; ".join(f"{p.name}: {p.source}" for p in _PRESETS.values())
        + ". Options given next to it win",
    )
    parse_known_args = parser.parse_known_args

    def parse_with_preset(args: Sequence[str] | None = None, namespace=None):
        import sys

        from lisa_apps.recipes import flag_value

        tokens = list(sys.argv[1:] if args is None else args)
        name = flag_value(tokens, "--preset")
        if name in _PRESETS:  # an unknown name is left to argparse's choices check
            tokens = preset_arguments(name, parser) + tokens
        return parse_known_args(tokens, namespace)

    parser.parse_known_args = parse_with_preset


def check_preset_policy(name: str | None, policy) -> None:
    """Refuse a run of a preset that samples by a score source without a policy from it.

    Args:
        name: the ``--preset`` (None: nothing to check).
        policy: the ``--policy`` read (a :class:`diagnostics.policy.SamplingPolicy`) or None.
    """
    if name is None or get_preset(name).needs_policy is None:
        return
    preset = get_preset(name)
    gamma = preset.options["gamma"]
    derive = (
        f"derive one with `lisa policy --source {preset.needs_policy} --gamma {gamma} --model "
        f"MODEL --out {name}.json` and pass --policy {name}.json"
    )
    if policy is None:
        raise ValueError(f"--preset {name} samples by {preset.needs_policy} scores: {derive}")
    provenance = policy.provenance or {}
    settings = provenance.get("source_settings") or {}
    if provenance.get("score_source") != preset.needs_policy or settings.get(
        "direction", "favour"
    ) != "favour":
        raise ValueError(
            f"--preset {name} needs a policy from the favoured {preset.needs_policy} source, "
            f"but the policy's source is {provenance.get('score_source')!r}; {derive}"
        )


register_preset(
    Preset(
        name="badam",
        source="BAdam (Luo, Yu, Li 2024, arXiv 2404.02827), as LLaMA-Factory runs it",
        options={
            "gamma": 1,
            "interval": 50,
            "sampler": "cyclic",
            "state_policy": "reset",
            "freeze_embeddings": True,
            "freeze_head": True,
            "lr": 1e-5,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.1,
        },
        source_settings={
            "badam_mode": "layer",
            "badam_switch_mode": "ascending",
            "badam_switch_interval": 50,
            "learning_rate": 1e-5,
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.1,
            "embedding and head": "frozen",
            "optimizer state": "cleared at every switch",
        },
        differences=(
            "the final norm (an extra) trains with every block; BAdam freezes everything "
            "outside the active block",
        ),
    )
)

register_preset(
    Preset(
        name="owlore",
        source="OwLore (Li et al. 2024, arXiv 2405.18380): outlier-weighted layerwise sampling",
        options={"gamma": 5, "interval": 50, "lr": 3e-4},
        source_settings={
            "sampled layers": 5,
            "sampling period K": 50,
            "score": "OWL's layerwise outlier ratio (its LLaMA-2-7B ratios appear to use M = 13)",
            "probabilities": "outlier ratio / sum of outlier ratios",
            "learning_rate": 3e-4,
            "embedding and head": "trained",
            "low-rank projection": "GaLore on the sampled layers",
        },
        differences=(
            "M = 5 unless the policy was derived with another --threshold (OWL's LLaMA-7B M)",
            "no GaLore low-rank projection: the sampled blocks train in full with AdamW",
            "blocks are drawn with exact inclusion probabilities pi_l = gamma * s_l / sum(s) "
            "(capped at 1), not by gamma weighted draws without replacement with p_l = s_l / sum(s)",
        ),
        needs_policy="outlier",
    )
)

register_preset(
    Preset(
        name="lisa-paper",
        source="LISA (Pan et al. 2024, arXiv 2403.17919), the reference code's defaults (LMFlow)",
        options={"gamma": 2, "interval": 20},
        source_settings={
            "lisa_activated_layers": 2,
            "lisa_interval_steps": 20,
            "embedding and head": "trained",
        },
        differences=(
            "the learning rate stays lisa's default (the paper tunes it per model and task)",
        ),
    )
)
