"""diagnostics.runtime: device resolution, precisions, prepared models and peak memory."""

from __future__ import annotations

import pytest
import torch

from diagnostics.runtime import (
    PeakMemory,
    autocast,
    check_precision,
    prepare_model,
    resolve_device,
)


def test_default_device_is_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected


@pytest.mark.parametrize(("device", "message"), [("tpu", "is not a device"), ("meta", "not supported")])
def test_unknown_devices_are_refused(device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(ValueError, match="has none"):
        resolve_device("cuda")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision='fp16'"):
        check_precision("fp16")


@pytest.mark.parametrize(
    ("precision", "dtype"), [("float32", torch.float32), ("bf16-mixed", torch.float32), ("bf16", torch.bfloat16)]
)
def test_prepare_model_sets_the_weight_dtype_of_each_precision(tiny_llama, precision, dtype):
    model = prepare_model(tiny_llama(), device=torch.device("cpu"), precision=precision)
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_bf16_mixed_autocasts_matmuls_and_float32_does_not():
    a = torch.ones(4, 4)
    with autocast(torch.device("cpu"), "bf16-mixed"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "float32"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.numerics
def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama):
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = prepare_model(
            tiny_llama(), device=torch.device("cpu"), gradient_checkpointing=checkpointing
        ).train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    # Bit for bit: checkpointing recomputes the same forward, its sums in the same order.
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_peak_memory_sees_a_large_allocation_inside_the_span_only():
    big = 256 * 2**20
    with PeakMemory(torch.device("cpu")) as quiet:
        pass
    with PeakMemory(torch.device("cpu")) as busy:
        block = torch.ones(big // 4)  # float32: touches every page
        del block
    assert busy.peak_bytes - quiet.peak_bytes > 0.9 * big
    assert busy.since_start and "RSS" in busy.measure
