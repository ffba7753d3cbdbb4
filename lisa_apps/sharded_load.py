"""Load a safetensors model folder under FSDP2 without any rank holding the whole model.

The full-copy way (``load_model`` then ``shard_model``) has every rank read the whole model
into CPU memory before sharding it: 4 bytes a parameter in float32, so 276 GB per rank for a
70B model. Here the model is built with its parameters on the meta device (no storage), sharded
by :func:`lisa.distributed.shard_model`, given empty storage for its shards only
(``to_empty``), and each rank then reads from the safetensors files just the rows of every
weight it owns (``safe_open(...).get_slice(name)[start:stop]``), converting them slice by slice
into the run's dtype. At no point does a rank allocate a whole weight: the largest transient is
one rank's slice of one tensor.

Three steps, because the runner prepares the model between them (precision, what trains):

1. :func:`empty_model` builds the model: parameters on meta, buffers real (rotary ``inv_freq``
   and the like are computed by the model's own ``__init__``, exactly as a normal load does).
2. the caller casts it (``model.to(dtype=...)`` casts the buffers as it would a loaded model),
   sets what trains and calls ``shard_model``;
3. :func:`load_shards` gives the shards storage on the device and fills them.

Only folders whose weights are safetensors (``model.safetensors`` or a sharded set with
``model.safetensors.index.json``) take this path; see :func:`can_load_sharded`. The built-in
default model (a GGUF file dequantised once, 135M parameters) keeps the full-copy path.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_ATTRIBUTE",
    "can_load_sharded",
    "empty_model",
    "load_for_run",
    "load_shards",
    "on_meta",
]

logger = logging.getLogger(__name__)

# Set by empty_model on the model it builds: the folder load_shards reads.
CHECKPOINT_ATTRIBUTE = "lisa_checkpoint_folder"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# peft's prefix for the wrapped model and the module an adapted layer's weight moves into.
_PEFT_PREFIX = "base_model.model."
_BASE_LAYER = ".base_layer"


def checkpoint_files(folder: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, from the index or the single file.

    Raises:
        ValueError: the folder has neither ``model.safetensors`` nor an index.
    """
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / SINGLE_FILE).is_file():
        with SafetensorsRows(folder / SINGLE_FILE) as file:
            return dict.fromkeys(file.names, folder / SINGLE_FILE)
    raise ValueError(
        f"model folder {str(folder)!r} has no {SINGLE_FILE} or {INDEX_FILE}; sharded loading "
        "reads safetensors (save the model with save_pretrained(folder, safe_serialization=True))"
    )


# safetensors' dtype names (the format's spec); the files are little-endian, as torch is here.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


class SafetensorsRows:
    """Reads rows of the tensors in one safetensors file with plain positioned reads.

    A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte
    offsets) and the row-major data, so rows ``[start, stop)`` of a tensor are one contiguous
    byte range. Reading it with ``readinto`` into a new tensor allocates exactly those rows and
    maps nothing: safetensors' own ``get_slice`` reads through a memory map, whose touched pages
    count in the process's resident set until the file is closed.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/t.safetensors"
        >>> save_file({"w": torch.arange(6.0).reshape(3, 2)}, path)
        >>> with SafetensorsRows(path) as file:
        ...     file.shape("w"), file.rows("w", 1, 3)
        ((3, 2), tensor([[2., 3.],
                [4., 5.]]))
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = self.path.open("rb")
        length = int.from_bytes(self._handle.read(8), "little")
        header = json.loads(self._handle.read(length))
        header.pop("__metadata__", None)
        self._header = header
        self._data_start = 8 + length

    @property
    def names(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of tensor ``name`` (a 0-d tensor: all of it), in its dtype."""
        info = self._header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(
                f"{self.path}: {name} has dtype {info['dtype']}, not one of {list(_DTYPES)}"
            )
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if not shape:
            out, offset = torch.empty((), dtype=_DTYPES[info["dtype"]]), begin
        else:
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            out = torch.empty((stop - start, *shape[1:]), dtype=_DTYPES[info["dtype"]])
            offset = begin + start * row_bytes
        buffer = out.reshape(-1).view(torch.uint8).numpy()  # (rows x row_bytes,) of out's memory
        self._handle.seek(self._data_start + offset)
        if self._handle.readinto(buffer) != buffer.size:
            raise ValueError(f"{self.path}: {name} is cut short; the file is incomplete")
        return out

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SafetensorsRows:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def on_meta(model: nn.Module) -> bool:
    """True when ``model``'s parameters have no storage yet (built by :func:`empty_model`).

    Example:
        >>> on_meta(nn.Linear(2, 2))
        False
    """
    return any(parameter.is_meta for parameter in model.parameters())


def can_load_sharded(folder: str | Path) -> bool:
    """True for a model folder (config.json) whose weights are safetensors.

    Example:
        >>> can_load_sharded("tiny-llama")  # a built-in name, not a folder
        False
    """
    folder = Path(folder).expanduser()
    return (folder / "config.json").is_file() and (
        (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()
    )


def load_for_run(
    name_or_path: str,
    *,
    seed: int = 0,
    distributed: str | None = None,
    method: str = "lisa",
    shard_lora: bool = False,
):
    """``(model, tokenizer)`` for a run: a meta model when FSDP2 will load it shard by shard.

    Under ``distributed="fsdp2"`` with more than one rank, a folder of safetensors (not a LoRA
    run of ``lisa train``, which wraps the whole model; ``shard_lora`` for lisa diagnose's
    sharded LoRA probe, whose adapters ``diagnostics.lora.wrap_lora`` draws on the empty model)
    gives :func:`empty_model`'s model, which :func:`lisa_apps.training.finetune` or
    :func:`diagnostics.probes.run_probe` loads after sharding. Everything else (one process,
    DDP, the built-in names, the default GGUF model, adapter folders) is
    :func:`lisa_apps.models.load_model`.

    Example:
        >>> model, _ = load_for_run("tiny-llama", distributed="fsdp2")  # built in: loaded whole
        >>> on_meta(model)
        False
    """
    from lisa_apps.models import load_model, load_tokenizer
    from lisa_apps.training.distributed import rank_and_world

    if distributed != "fsdp2" or (method == "lora" and not shard_lora) or rank_and_world()[1] < 2:
        return load_model(name_or_path, seed=seed)
    if not can_load_sharded(name_or_path):
        return load_model(name_or_path, seed=seed)
    tokenizer = load_tokenizer(name_or_path)  # checks the folder, sets a pad token
    try:
        model = empty_model(name_or_path)
    except ValueError as error:  # names from another version of the class: transformers maps them
        logger.warning("loading the whole model on every rank: %s", error)
        return load_model(name_or_path, seed=seed)
    logger.info("loading %s shard by shard (no rank holds the whole model)", name_or_path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def empty_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM of ``folder`` with its parameters on the meta device and real buffers.

    Tied weights are tied (the head's weight is the embedding's parameter). The folder is
    recorded on the model (``CHECKPOINT_ATTRIBUTE``) for :func:`load_shards`.

    Raises:
        ValueError: the folder's safetensors lack a parameter or buffer the model has (names
            written by another version of the model class): load it with ``load_model``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder).expanduser().resolve()
    config = AutoConfig.from_pretrained(folder)
    # Not ``with torch.device("meta")``: that would put the buffers there too, losing the
    # values the model's __init__ computes for them (rotary frequencies).
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # init_empty_weights swaps each parameter for a meta one after from_config tied them: tie
    # again, so a tied head is the embedding's parameter (one shard, one load).
    model.tie_weights()
    stored = checkpoint_files(folder)
    missing = [name for name, _ in model.named_parameters() if name not in stored]
    if missing:
        raise ValueError(
            f"model folder {str(folder)!r}: its safetensors lack {len(missing)} of the model's "
            f"tensors ({', '.join(missing[:3])}, ...); sharded loading needs the names the "
            "model class uses: re-save it with save_pretrained or train without --distributed fsdp2"
        )
    model.name_or_path = str(folder)
    model.config._name_or_path = str(folder)
    setattr(model, CHECKPOINT_ATTRIBUTE, str(folder))
    model.eval()
    return model


def checkpoint_name(name: str) -> str:
    """The checkpoint's name of a parameter or buffer of the model, plain or peft-wrapped.

    peft wraps the model as ``base_model.model`` and moves an adapted layer's weight under
    ``base_layer``; the checkpoint names the plain model's tensors.

    Example:
        >>> checkpoint_name("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight")
        'model.layers.0.mlp.up_proj.weight'
    """
    return name.removeprefix(_PEFT_PREFIX).replace(_BASE_LAYER, "")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor); a plain tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def shard_rows(tensor: torch.Tensor) -> tuple[int, int]:
    """The rows ``[start, stop)`` of the full tensor this rank's local shard holds.

    FSDP2 shards dim 0 like ``torch.chunk``: every rank but the last ones gets
    ceil(rows / W) rows, and a rank past the end gets none. A plain tensor holds all its rows.
    """
    if not hasattr(tensor, "placements"):
        return 0, tensor.shape[0] if tensor.dim() else 0
    from torch.distributed.tensor import Shard

    placements = tensor.placements
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(
            f"sharded loading reads dim-0 shards (FSDP2 on a 1-D mesh), not {placements}"
        )
    rows = tensor.shape[0]
    mesh = tensor.device_mesh
    chunk = math.ceil(rows / mesh.size())
    start = min(mesh.get_local_rank() * chunk, rows)
    stop = start + tensor.to_local().shape[0]
    if stop > rows or stop - start != min(chunk, rows - start):
        raise ValueError(f"unexpected FSDP2 shard: rows {start}:{stop} of {rows}")
    return start, stop


@torch.no_grad()
def load_shards(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Give a sharded meta model storage on ``device`` and fill it from its checkpoint.

    Each rank reads only the rows it owns of every tensor, in the file's dtype, and copies them
    into its shard (converted there to the shard's dtype: a bfloat16 run never holds a float32
    weight). Buffers the model computed (not in the checkpoint) keep their values, and so do
    parameters that are not on the meta device (LoRA adapters drawn on the empty model).

    Args:
        model: built by :func:`empty_model`, maybe peft-wrapped (names are mapped back with
            :func:`checkpoint_name`), then sharded (``lisa.distributed.shard_model``).
        device: the mesh's device (this rank's CUDA device, or the CPU under gloo).

    Returns:
        The same model, loaded.
    """
    folder = getattr(model, CHECKPOINT_ATTRIBUTE, None)
    if folder is None:
        raise ValueError(
            "load_shards needs a model built by lisa_apps.sharded_load.empty_model (it records "
            "the checkpoint folder)"
        )
    stored = checkpoint_files(folder)
    # Buffers the checkpoint lacks (non-persistent ones: rotary inv_freq) keep the value the
    # model computed when it was built; to_empty would leave them uninitialised. So do the
    # parameters that already have values (LoRA adapters drawn on the empty model by
    # diagnostics.lora.wrap_lora): this rank's shard of each is put back.
    kept = {
        name: b.clone()
        for name, b in model.named_buffers()
        if checkpoint_name(name) not in stored
    }
    drawn = {
        name: _local(p).detach().clone()
        for name, p in model.named_parameters()
        if not p.is_meta
    }
    model.to_empty(device=device)
    for name, buffer in kept.items():
        owner, _, attribute = name.rpartition(".")
        model.get_submodule(owner)._buffers[attribute] = buffer.to(device)
    parameters = dict(model.named_parameters())  # a tied weight once, by its first name
    for name, values in drawn.items():
        _local(parameters[name]).copy_(values)
    targets = {name: p for name, p in parameters.items() if name not in drawn}
    targets |= {name: b for name, b in model.named_buffers() if name not in kept}
    by_file: dict[Path, list[str]] = {}
    for name in targets:
        if checkpoint_name(name) not in stored:
            raise ValueError(
                f"{name}: the checkpoint in {folder} has no {checkpoint_name(name)!r} and the "
                "parameter has no values of its own"
            )
        by_file.setdefault(stored[checkpoint_name(name)], []).append(name)
    for path, names in by_file.items():
        with SafetensorsRows(path) as file:
            for name in names:
                target, stored_name = targets[name], checkpoint_name(name)
                local = _local(target)
                if file.shape(stored_name) != tuple(target.shape):
                    raise ValueError(
                        f"{name}: the checkpoint holds shape {file.shape(stored_name)}, the model "
                        f"{tuple(target.shape)}"
                    )
                start, stop = shard_rows(target)
                if local.dim() == 0 or stop > start:
                    # (stop - start, ...) rows in the file's dtype; copy_ casts into the shard.
                    local.copy_(file.rows(stored_name, start, stop))
    return model
