"""Score sources: each against a direct computation on a tiny model, plus their invariants."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diagnostics.policy import SamplingPolicy, policy_from_scores
from diagnostics.probes import run_probe
from diagnostics.sources import (
    FileSource,
    GradNormSource,
    NormRatioSource,
    OutlierSource,
    ScoreSource,
    available_sources,
    make_source,
    policy_from_source,
    register_source,
)
from lisa_apps.data import DataCollator

NUM_BLOCKS = 3


def _batches(count=3, batch_size=2, length=8, seed=0, pad=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, 128, (batch_size, length), generator=generator)
        mask = torch.ones_like(ids)
        if pad:
            mask[0, -pad:] = 0
            ids[0, -pad:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


@pytest.fixture
def model(tiny_llama):
    return tiny_llama(num_blocks=NUM_BLOCKS, hidden=32)


# -- the registry ---------------------------------------------------------------------------


def test_registry_lists_the_four_built_ins_and_refuses_a_duplicate():
    assert available_sources()[:4] == ("norm-ratio", "grad-norm", "outlier", "file")
    with pytest.raises(ValueError, match="already registered"):
        register_source("outlier", OutlierSource)
    with pytest.raises(ValueError, match="known sources: norm-ratio, grad-norm"):
        make_source("gradnorm")
    with pytest.raises(ValueError, match="threshold"):
        make_source("outlier", threshold=0)
    assert all(isinstance(make_source(n, **({"path": "s.csv"} if n == "file" else {})),
                          ScoreSource) for n in available_sources())  # fmt: skip


# -- grad-norm ------------------------------------------------------------------------------


def _reference_grad_norms(model, batches, reduce="l2"):
    """Plain autograd on every parameter, blocks found by their parameter names."""
    model.eval()
    per_batch = []
    for batch in batches:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(True)
        model(**batch).loss.backward()
        row = []
        for index in range(NUM_BLOCKS):
            grads = [p.grad.double().reshape(-1) for n, p in model.named_parameters()
                     if n.startswith(f"model.layers.{index}.")]  # fmt: skip
            flat = torch.cat(grads)
            norm = float(flat.norm())
            row.append(norm / math.sqrt(flat.numel()) if reduce == "rms" else norm)
        per_batch.append(row)
    model.zero_grad(set_to_none=True)
    return np.mean(per_batch, axis=0)


# The float32 grads come from the same backward; only the float64 norm sums a block's n squares
# in another order, which moves it by at most n * 2**-53 relative (all terms positive; the
# square root halves it). A block of the tiny Llama here holds under 2**14 parameters.
GRAD_NORM_RTOL = 2**14 * 2.0**-53  # 1.8e-12; measured 1e-15


@pytest.mark.numerics
@pytest.mark.parametrize("reduce", ["l2", "rms"])
def test_grad_norm_matches_plain_autograd(model, reduce):
    batches = _batches()
    scores = GradNormSource(reduce=reduce).block_scores(model, batches=batches)
    assert sum(p.numel() for p in model.model.layers[0].parameters()) < 2**14  # the bound's n
    np.testing.assert_allclose(
        scores, _reference_grad_norms(model, batches, reduce), rtol=GRAD_NORM_RTOL
    )


def test_grad_norm_builds_no_optimizer_holds_no_state_and_changes_nothing(model, monkeypatch):
    built = []
    original = torch.optim.Optimizer.__init__

    def spy(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", spy)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("model.layers.1."))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    GradNormSource().block_scores(model, batches=_batches())
    assert built == []  # no optimizer, hence no optimizer state
    assert model.training
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name])
        assert parameter.grad is None
        assert parameter.requires_grad == flags[name]


@settings(max_examples=15)
@given(order=st.permutations(range(4)))
def test_grad_norm_is_invariant_to_the_order_of_batches(order):
    from lisa_apps.tiny import build_tiny_model

    model = build_tiny_model("tiny-llama", num_blocks=2, hidden=16, vocab_size=128, seed=1)
    batches = _batches(count=4, length=6, seed=3)
    source = GradNormSource()
    expected = source.block_scores(model, batches=batches)
    shuffled = source.block_scores(model, batches=[batches[i] for i in order])
    assert shuffled.tolist() == expected.tolist()  # exact: fsum of the same per-batch norms


# -- outlier --------------------------------------------------------------------------------


def _reference_outlier_ratios(model, batches, threshold):
    """Inputs captured by pre-hooks, padding removed by hand, A = |W| * ||X_j|| in numpy."""
    captured: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
            def hook(_, inputs, name=name):
                captured.setdefault(name, []).append(inputs[0].detach().double().numpy())
            handles.append(module.register_forward_pre_hook(hook))
    model.eval()
    masks = []
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            masks.append(batch["attention_mask"].numpy().astype(bool))
    for handle in handles:
        handle.remove()
    ratios = []
    for index in range(NUM_BLOCKS):
        entries = []
        for name, chunks in captured.items():
            if not name.startswith(f"model.layers.{index}."):
                continue
            rows = np.concatenate([c[m] for c, m in zip(chunks, masks, strict=True)])  # (tokens, in)
            weight = np.abs(model.get_submodule(name).weight.detach().double().numpy())
            entries.append((weight * np.sqrt((rows**2).sum(axis=0))[None, :]).ravel())
        metric = np.concatenate(entries)
        ratios.append(float(np.mean(metric > threshold * metric.mean())))
    return np.array(ratios)


@pytest.mark.numerics
@pytest.mark.parametrize("threshold", [2.0, 4.0])
def test_outlier_ratio_matches_a_direct_computation_with_padding(model, threshold):
    batches = _batches(count=2, pad=3)
    source = OutlierSource(threshold=threshold)
    np.testing.assert_allclose(
        source.block_scores(model, batches=batches),
        _reference_outlier_ratios(model, batches, threshold),
        rtol=1e-9,
    )


@pytest.mark.numerics
def test_outlier_scores_ignore_padding_and_reverse_mirrors_them(model):
    batches = _batches(count=1, batch_size=2, length=8)
    padded = {k: torch.cat([v, torch.zeros_like(v[:, :3]) + (0 if k != "labels" else -100)], 1)
              for k, v in batches[0].items()}  # fmt: skip
    padded["attention_mask"][:, -3:] = 0
    favour = OutlierSource(threshold=2).block_scores(model, batches=batches)
    np.testing.assert_allclose(OutlierSource(threshold=2).block_scores(model, batches=[padded]),
                               favour, rtol=1e-9)  # fmt: skip
    reverse = OutlierSource(threshold=2, direction="reverse").block_scores(model, batches=batches)
    np.testing.assert_allclose(reverse, favour.max() + favour.min() - favour)


def test_outlier_refuses_a_threshold_no_entry_exceeds(model):
    with pytest.raises(ValueError, match="lower the threshold"):
        OutlierSource(threshold=1e6).block_scores(model, batches=_batches(count=1))


# -- norm-ratio -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_norms():
    from lisa_apps.tiny import build_tiny_model

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (8, 10), generator=generator).tolist()
    features = [{"input_ids": x, "attention_mask": [1] * 10, "labels": x} for x in ids]
    def build():
        return build_tiny_model("tiny-llama", num_blocks=NUM_BLOCKS, hidden=32, vocab_size=128)

    tables = [
        run_probe(build, features, method, collate=DataCollator(pad_token_id=0), steps=2,
                  lr=1e-2, batch_size=2, kinds=("weight", "trainable", "delta"),
                  reduce=("l2", "rms"), progress=False)
        for method in ("lora", "ft")
    ]
    return pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("kind", ["weight", "trainable", "delta"])
@pytest.mark.parametrize("reduce", ["l2", "rms"])
def test_norm_ratio_is_the_ratio_of_the_probes_block_means(probe_norms, kind, reduce):
    rows = probe_norms[(probe_norms["kind"] == kind) & (probe_norms["reduce"] == reduce)]
    rows = rows[rows["block_index"].notna()]
    means = rows.groupby(["method", "block_index"])["norm"].mean()
    expected = (means["lora"] / means["ft"]).sort_index().to_numpy()
    scores = NormRatioSource(kind=kind, reduce=reduce).block_scores(norms=probe_norms)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_norm_ratio_names_a_missing_method(probe_norms):
    with pytest.raises(ValueError, match="no rows of method 'lora-eh'"):
        NormRatioSource(lora_method="lora-eh").block_scores(norms=probe_norms)


# -- file -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("s.csv", "block,score\nblock.2,3\n0,1\n1,2\n"),
        ("s.csv", "score\n1\n2\n3\n"),
        ("s.json", "[1, 2, 3]"),
        ("s.json", '{"scores": [1, 2, 3]}'),
        ("s.json", '{"block.1": 2, "block.0": 1, "block.2": 3}'),
    ],
)
def test_file_source_reads_every_layout_in_block_order(tmp_path, model, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert FileSource(path).block_scores(model).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "2 scores for a model with 3 blocks"),
        ("[1, NaN, 3]", "score of block 1 is NaN"),
        ("[1, -2, 3]", "score of block 1 is -2.0; scores must be >= 0"),
        ('[1, "x", 3]', "score of block 1 is 'x', not a number"),
        ("[0, 0, 0]", "every score is 0"),
        ('{"block.0": 1, "block.0 ": 2, "block.2": 3}', "block 0 is given more than once"),
        ("{", "is not valid JSON"),
    ],
)
def test_file_source_refuses_bad_scores_naming_the_file(tmp_path, model, text, message):
    path = tmp_path / "scores.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        FileSource(path).block_scores(model)
    assert str(path) in str(error.value)


def test_file_source_refuses_a_csv_without_a_score_column(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("block,value\n0,1\n")
    with pytest.raises(ValueError, match="no 'score' column"):
        FileSource(path).block_scores()


# -- invariants shared by every source ------------------------------------------------------


@settings(max_examples=12)
@given(num_blocks=st.integers(1, 4), seed=st.integers(0, 50))
def test_every_source_gives_one_finite_nonnegative_score_per_block(tmp_path_factory, num_blocks, seed):
    from lisa_apps.tiny import build_tiny_model

    model = build_tiny_model("tiny-llama", num_blocks=num_blocks, hidden=16, vocab_size=128, seed=seed)
    batches = _batches(count=2, length=6, seed=seed)
    path = tmp_path_factory.mktemp("scores") / "scores.json"
    path.write_text(json.dumps(np.random.default_rng(seed).uniform(0, 5, num_blocks).tolist()))
    for source in (GradNormSource(), GradNormSource("rms"), OutlierSource(threshold=2),
                   OutlierSource(threshold=2, direction="reverse"), FileSource(path)):  # fmt: skip
        scores = source.block_scores(model, batches=batches)
        assert scores.shape == (num_blocks,)
        assert np.all(np.isfinite(scores)) and np.all(scores >= 0)


@given(
    scores=st.lists(st.floats(0.01, 100, allow_nan=False), min_size=2, max_size=12),
    scale=st.floats(1e-3, 1e3, allow_nan=False),
)
def test_the_scale_of_the_scores_does_not_change_the_policy(scores, scale):
    gamma = max(1, len(scores) // 2)
    policy = policy_from_scores(scores, gamma, source="file")
    scaled = policy_from_scores([s * scale for s in scores], gamma, source="file")
    np.testing.assert_allclose(scaled.inclusion_probabilities, policy.inclusion_probabilities,
                               atol=1e-9)  # fmt: skip


def test_a_source_policy_records_its_source_and_settings_through_json(model, tmp_path):
    policy = policy_from_source(OutlierSource(threshold=2, direction="reverse"), 2, model=model,
                                batches=_batches(count=2), model_name="tiny")  # fmt: skip
    loaded = SamplingPolicy.from_json(policy.to_json(tmp_path / "policy.json"))
    assert loaded.provenance["score_source"] == "outlier"
    assert loaded.provenance["source_settings"] == {"threshold": 2.0, "direction": "reverse"}
    assert loaded.provenance["num_batches"] == 2 and len(loaded.provenance["scores"]) == NUM_BLOCKS
    loaded.check_compatible(model)
    with pytest.raises(ValueError, match="needs batches"):
        policy_from_source(GradNormSource(), 2, model=model)
