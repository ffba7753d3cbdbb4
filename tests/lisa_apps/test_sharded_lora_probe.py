"""lisa diagnose's LoRA probe sharded by FSDP2 (2 gloo ranks) against one process.

One spawn of 2 ranks answers every check: ``diagnose`` with ``lora_probe="sharded"`` on a tiny
Llama saved as sharded safetensors (so the LoRA probe's base is loaded shard by shard and its
adapters drawn on the empty model), and the norms of a sharded LoRA model whose B matrices are
set to known non-zero values (the cross and delta terms, zero at step 0 of a probe). Rank 0
saves what it gathered; the test compares it with one process.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from diagnostics.lora import wrap_lora
from diagnostics.norms import layer_norms
from diagnostics.probes import run_probe
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa.layers import LayerMap
from lisa_apps.data import DataCollator, make_math_problems, tokenize_examples
from lisa_apps.models import load_model, load_tokenizer
from lisa_apps.pipeline import DiagnoseSettings, diagnose
from lisa_apps.probe_layout import auto_layout
from lisa_apps.tiny import build_tiny_model, build_tiny_tokenizer
from tests.numerics import U32, adam_ratio_bound

WORLD = 2
STEPS = 2
LORA_RANK = 4
KINDS = ("weight", "trainable", "delta")
SETTINGS = dict(
    steps=STEPS, batch_size=2, max_length=128, rank=LORA_RANK, gamma=1, kinds=KINDS,
    progress=False, device="cpu",
)  # fmt: skip
EXAMPLES = 4
# A norm's square is summed in rows of 2048 float32 elements (diagnostics.norms), and a shard
# starts a new row where one process does not: two float32 sums of n <= 2048 positive terms
# in another order differ by at most 2(n - 1)u of the sum (Higham 2002, eq. 4.4), so the
# squares by 2 * 2048u relatively and the norms by half that.
NORM_RTOL = 2048 * U32  # 1.2e-4
# After step 0 the adapters may differ: an AdamW step moves an element by at most
# lr * adam_ratio_bound whatever its gradient, so the two runs' adapters differ by at most
# D = 2 * STEPS * lr * ratio per element (B starts at zero, A from the same draws). A group's
# trainable norm then differs by at most D sqrt(n_adapter), and its effective weight or delta
# by s ||B1 A1 - B2 A2|| <= s r D (max|A| + max|B|) sqrt(n_weight) per module (bounded in
# adapter_bound below), max|B| <= D / 2 and max|A| <= 1/sqrt(fan_in) + D / 2 (peft's
# kaiming-uniform bound).
ADAPTER_ATOL = 2 * STEPS * DEFAULT_LEARNING_RATES["lora"] * adam_ratio_bound(STEPS)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _with_known_b(model):
    """Set every LoRA B to fixed non-zero values (a seeded generator, the same everywhere)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _worker(rank: int, port: int, root: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from lisa.distributed import shard_model
    from lisa_apps.sharded_load import empty_model, load_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        folder = Path(root) / "model"
        settings = DiagnoseSettings(**SETTINGS, distributed="fsdp2", lora_probe="sharded")
        out = Path(root) / "two" if rank == 0 else None
        diagnose(str(folder), load_tokenizer(folder), make_math_problems(EXAMPLES), out, settings)
        model = _with_known_b(wrap_lora(empty_model(folder), rank=LORA_RANK, seed=0))
        shard_model(model, mesh=init_device_mesh("cpu", (WORLD,)))
        load_shards(model, "cpu")
        norms = {kind: layer_norms(model, kind=kind) for kind in KINDS}
        if rank == 0:
            torch.save(norms, Path(root) / "norms.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded-lora-probe")
    model = build_tiny_model("tiny-llama", num_blocks=2, hidden=64, vocab_size=321, seed=7)
    model.save_pretrained(root / "model", max_shard_size="40kB", safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(root / "model")
    mp.start_processes(_worker, args=(_free_port(), str(root)), nprocs=WORLD, start_method="spawn")
    return root


def _one_process_lora_probe(folder: Path):
    """The LoRA probe of ``diagnose(..., DiagnoseSettings(**SETTINGS))`` in one process."""
    model, tokenizer = load_model(str(folder))
    features = tokenize_examples(
        make_math_problems(EXAMPLES), tokenizer, max_length=SETTINGS["max_length"]
    )
    return run_probe(
        model, features, "lora", collate=DataCollator(tokenizer), steps=STEPS,
        lora_rank=LORA_RANK, batch_size=SETTINGS["batch_size"], kinds=KINDS, progress=False,
        device="cpu", run="lora-probe",
    )  # fmt: skip


def _norms(table):
    return table[table["method"] == "lora"].set_index(["step", "group", "kind", "reduce"])["norm"]


def adapter_bound(model, group: str, kind: str) -> float:
    """The AdamW bound above for one group of the one-process LoRA model."""
    layer_map = LayerMap.from_model(model)
    adapters = [p for n, p in layer_map.parameters(group) if "lora_" in n]
    if kind == "trainable":
        return ADAPTER_ATOL * math.sqrt(sum(p.numel() for p in adapters))
    bound = 0.0
    for name, parameter in layer_map.parameters(group):
        if name.endswith("base_layer.weight"):
            largest_a = 1 / math.sqrt(parameter.shape[1]) + ADAPTER_ATOL / 2
            per_element = 2 * LORA_RANK * ADAPTER_ATOL * (largest_a + ADAPTER_ATOL / 2)  # s = 2
            bound += per_element**2 * parameter.numel()
    return math.sqrt(bound)


@pytest.mark.numerics
def test_sharded_lora_probe_equals_one_process(runs):
    from diagnostics.recorder import load_norms

    two = _norms(load_norms(runs / "two" / "norms.csv"))
    one = _norms(_one_process_lora_probe(runs / "model"))
    # Per step: weight and delta of embed, 2 blocks, head, extras; trainable of the 2 blocks.
    assert two.index.equals(one.index) and len(one) == (STEPS + 1) * (5 + 5 + 2)
    start = one.xs(0, level="step")
    torch.testing.assert_close(  # the same weights and adapters: rounding only
        torch.tensor(two.xs(0, level="step").to_numpy()), torch.tensor(start.to_numpy()),
        rtol=NORM_RTOL, atol=0.0,
    )  # fmt: skip
    model = wrap_lora(load_model(str(runs / "model"))[0], rank=LORA_RANK, seed=0)
    # Later steps: the adapters' bound; the sums' rounding there (NORM_RTOL M^2 / norm, see
    # test_sharded_norms_of_adapted_weights_equal_one_process) is orders of magnitude below it
    # (|B| <= D / 2 keeps M within a few times the norm), so NORM_RTOL times the norm stands in.
    for (step, group, kind, _), value in one.items():
        bound = NORM_RTOL * value + (adapter_bound(model, group, kind) if step else 0.0)
        assert abs(two[step, group, kind, "l2"] - value) <= bound, (step, group, kind)


def test_sidecar_records_the_sharded_lora_probe(runs):
    probes = json.loads((runs / "two" / "norms.json").read_text())["probes"]
    assert probes["lora"]["settings"]["distributed"] == "fsdp2"
    assert probes["lora"]["settings"]["world_size"] == WORLD
    assert probes["lora"]["layout"]["layout"] == "sharded"
    assert probes["lora"]["layout"]["reason"] == "asked for sharded"
    assert probes["ft"]["settings"]["distributed"] == "fsdp2"


def magnitude_squared(model, group: str, kind: str) -> float:
    """M^2 bounding the magnitudes summed for one group's squared norm (see the test below)."""
    layer_map = LayerMap.from_model(model)
    parameters = dict(layer_map.parameters(group))
    total = 0.0
    for name, parameter in parameters.items():
        if kind == "trainable":
            total += float(parameter.detach().double().square().sum()) * parameter.requires_grad
        elif name.endswith("base_layer.weight"):
            prefix = name.removesuffix("base_layer.weight")
            a = parameters[prefix + "lora_A.default.weight"].detach().double().abs()
            b = parameters[prefix + "lora_B.default.weight"].detach().double().abs()
            adapted = 2 * float(torch.linalg.norm(b @ a))  # s = alpha / r = 2
            base = float(torch.linalg.norm(parameter.detach().double())) if kind == "weight" else 0
            total += (base + adapted) ** 2
        elif kind == "weight" and "lora_" not in name:
            total += float(parameter.detach().double().square().sum())
    return total


@pytest.mark.numerics
def test_sharded_norms_of_adapted_weights_equal_one_process(runs):
    # Non-zero B: the effective weight's cross term 2s<W, BA> (each rank sums its rows of W,
    # the ranks' sums added in float64) and ||sBA|| (from gathered factors, in float64) count.
    # Each side's squared norm is float32 sums of <= 2048 terms: ||W||^2 off by at most 2048u
    # ||W||^2, the cross term by 2048u 2s sum|W| |B||A| <= 2048u 2s ||W|| |||B||A||| (Cauchy-
    # Schwarz), so all by at most 2048u M^2 with M^2 = sum over modules (||W|| + s|||B||A|||)^2
    # (magnitude_squared). The squares differ by twice that, the norms by NORM_RTOL M^2 / norm.
    sharded = torch.load(runs / "norms.pt", weights_only=False)
    base = wrap_lora(load_model(str(runs / "model"))[0], rank=LORA_RANK, seed=0)
    untouched = layer_norms(base, kind="weight")  # B = 0
    model = _with_known_b(base)
    for kind in KINDS:
        expected = layer_norms(model, kind=kind)
        assert sharded[kind].index.equals(expected.index)
        for group, value in expected.items():
            bound = NORM_RTOL * magnitude_squared(model, group, kind) / value if value else 0.0
            assert abs(sharded[kind][group] - value) <= bound, (kind, group)
            if kind == "weight" and group.startswith("block."):
                # The adapters move the norm far more than the bound: the check can fail.
                assert abs(value - untouched[group]) > 100 * bound, group


def test_auto_replicates_the_lora_probe_only_when_a_replica_fits():
    gib = 2**30
    assert auto_layout(8 * gib, 80 * gib) == "replicated"
    assert auto_layout(80 * gib, 80 * gib) == "replicated"  # exactly full still fits
    assert auto_layout(80 * gib + 1, 80 * gib) == "sharded"


def test_lora_probe_without_fsdp2_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    from lisa_apps.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    code = main(["diagnose", "--lora-probe", "sharded", "--model", "tiny-llama", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--lora-probe sharded applies to" in error[0], error
    assert not out.exists()
    with pytest.raises(ValueError, match="applies to distributed='fsdp2' only"):
        DiagnoseSettings(lora_probe="sharded")  # the Python API refuses it too
