"""Which model an estimate is for: a named family configuration, a tiny model or a config folder.

Only a transformers config is read, never a weight. Three kinds of names resolve, in this order:

- a tiny model (``tiny-llama``, ``tiny-gpt2``, ``tiny-qwen2``): :func:`lisa_apps.tiny.tiny_config`;
- a named family configuration shipped in ``lisa_apps/configs/<name>.json`` at the published
  dimensions (``llama-2-7b``, ``llama-3.1-8b``, ``mistral-7b``, ``qwen2.5-0.5b``,
  ``gemma-2-9b``, ``smollm2-135m``, ...; docs/memory.md says where each came from);
- a local folder holding a ``config.json`` (weights are neither needed nor read), or the path of
  such a JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lisa_apps.tiny import TINY_MODELS, tiny_config

__all__ = ["CONFIGS_DIR", "ModelSource", "family_names", "resolve_config"]

#: Folder of the named family configurations (one ``<name>.json`` each).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: its transformers config and where it came from.

    Attributes:
        name: the name or path as given.
        kind: "family" (shipped configuration), "tiny" or "folder".
        config: the transformers config.
    """

    name: str
    kind: str
    config: Any


def family_names() -> tuple[str, ...]:
    """Names of the shipped family configurations, sorted.

    Example:
        >>> {"llama-2-7b", "llama-3.1-8b", "smollm2-135m"} <= set(family_names())
        True
    """
    return tuple(sorted(path.stem for path in CONFIGS_DIR.glob("*.json")))


def family_summary(name: str) -> dict[str, Any]:
    """The few fields ``lisa estimate --list`` shows, read from the JSON (no model is built).

    Example:
        >>> family_summary("llama-2-7b")["num_hidden_layers"]
        32
    """
    data = json.loads((CONFIGS_DIR / f"{name}.json").read_text())
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "tie_word_embeddings")
    return {key: data.get(key) for key in keys}


def resolve_config(name_or_path: str) -> ModelSource:
    """The config of a tiny model, a family configuration, a config folder or a config file.

    Args:
        name_or_path: ``"tiny-llama"``, ``"llama-2-7b"`` (see :func:`family_names`), a folder
            with ``config.json``, or the path of a config JSON file.

    Returns:
        The :class:`ModelSource`.

    Raises:
        ValueError: an unknown name (the message lists the known ones), a folder without
            ``config.json``, or a config transformers cannot read.

    Example:
        >>> source = resolve_config("llama-2-7b")
        >>> source.kind, source.config.num_hidden_layers
        ('family', 32)
    """
    if name_or_path in TINY_MODELS:
        return ModelSource(name_or_path, "tiny", tiny_config(name_or_path))
    if name_or_path in family_names():
        return ModelSource(
            name_or_path, "family", _read_config(CONFIGS_DIR / f"{name_or_path}.json")
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(
                f"model folder {str(path)!r} has no config.json; pass a folder holding the "
                "model's config.json (its weights are not needed)"
            )
        return ModelSource(name_or_path, "folder", _read_config(config_file))
    if path.is_file() and path.suffix == ".json":
        return ModelSource(name_or_path, "folder", _read_config(path))
    known = ", ".join((*family_names(), *TINY_MODELS))
    raise ValueError(
        f"model {name_or_path!r} is not a known name, a folder with config.json or a config "
        f"file; known names: {known}"
    )


# Fields an estimate cannot do without: transformers fills in its own defaults when a config
# file lacks them (a Llama config without them is a 32-block 4096-wide model), so they are
# checked in the file itself.
REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers")


def _read_config(path: Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{str(path)!r} cannot be read as a model config ({detail})") from None
    missing = missing_fields(json.loads(path.read_text()) if path.is_file() else {}, config)
    if missing:
        raise ValueError(
            f"{str(path)!r} does not set {', '.join(missing)}, so the estimate would be of "
            f"transformers' defaults for {config.model_type}, not of this model; add "
            f"{'it' if len(missing) == 1 else 'them'} to the config"
        )
    return config


def missing_fields(raw: dict, config) -> list[str]:
    """The :data:`REQUIRED_FIELDS` a raw config dict sets under none of their names.

    A field counts under its own name, the config class's alias (GPT-2's ``n_embd``) or in
    a nested ``text_config``.

    Example:
        >>> from transformers import LlamaConfig
        >>> missing_fields({"model_type": "llama", "hidden_size": 64}, LlamaConfig())
        ['num_hidden_layers']
    """
    aliases = getattr(config, "attribute_map", {}) or {}
    nested = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    return [
        field
        for field in REQUIRED_FIELDS
        if not any(name in raw or name in nested for name in (field, aliases.get(field, field)))
    ]
