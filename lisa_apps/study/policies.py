"""The LISA policies of a study, derived once per study from its score sources.

Each non-uniform policy is derived once, before any run, on the model as loaded for the first
seed and from training batches only (the first ``score_batches`` batches of the first seed's
data order; norm-ratio: LoRA and FT probes of ``probe_steps`` steps on the training split). It
is saved as ``policies/NAME.json``; a resumed study reads it back instead of deriving it again,
so every run of a study uses the same policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from diagnostics.policy import SamplingPolicy
from lisa_apps.study.settings import StudySettings

__all__ = ["score_batches", "study_policies"]

logger = logging.getLogger(__name__)


def score_batches(features: Sequence[dict], collate, *, count: int, batch_size: int, seed: int):
    """The first ``count`` batches of a seeded shuffle of ``features`` (each ``batch_size``)."""
    order = np.random.default_rng(seed).permutation(len(features)).tolist()
    while len(order) < count * batch_size:
        order += np.random.default_rng(seed + len(order)).permutation(len(features)).tolist()
    return [
        collate([features[i] for i in order[b * batch_size : (b + 1) * batch_size]])
        for b in range(count)
    ]


def study_policies(
    settings: StudySettings,
    train_features: Sequence[dict],
    collate,
    folder,
    *,
    device,
    precision: str,
    log: Callable[[str], None] = print,
) -> dict[str, SamplingPolicy]:
    """Derive (or read back) the policy of every score source the study names."""
    from diagnostics.sources import make_source, policy_from_source
    from lisa_apps.models import load_model

    base_gamma = settings.base_lisa.gamma
    # (key, score source, gamma): the named policies, then those of presets that sample by a
    # score source (owlore: outlier), at the preset's own gamma, saved under the preset's name.
    wanted = [(name, name, base_gamma) for name in settings.policies if name != "uniform"]
    wanted += [
        (v.preset, v.policy, v.gamma)
        for v in settings.variants()
        if v.preset and v.policy not in ("uniform", "cyclic")
    ]
    policies: dict[str, SamplingPolicy] = {}
    seed = settings.seed_list[0]
    for name, source_name, gamma in wanted:
        target = folder.path / "policies" / f"{name}.json"
        if target.is_file():
            policies[name] = SamplingPolicy.from_json(target)
            log(f"policy {name}: read back from {target}")
            continue
        model, _ = load_model(settings.model, seed=seed)
        model.to(device)
        norms = None
        batches = None
        if source_name == "norm-ratio":
            source = make_source("norm-ratio", kind=settings.norm_kind, reduce=settings.norm_reduce)
            norms = _probe_norms(settings, train_features, collate, folder, device, precision)
        else:
            batches = score_batches(
                train_features, collate, count=settings.score_batches,
                batch_size=settings.batch_size, seed=seed,
            )  # fmt: skip
            if source_name == "grad-norm":
                source = make_source("grad-norm")
            else:
                direction = "reverse" if source_name == "outlier-reverse" else "favour"
                source = make_source(
                    "outlier", threshold=settings.outlier_threshold, direction=direction
                )
        policy = policy_from_source(
            source, gamma, model=model, batches=batches, norms=norms, model_name=settings.model
        )
        del model
        policy.to_json(folder.file(f"policies/{name}.json"))
        policies[name] = policy
        pi = policy.inclusion_probabilities
        log(
            f"policy {name}: scores {min(policy.provenance['scores']):.4g} .. "
            f"{max(policy.provenance['scores']):.4g}, inclusion probabilities {pi.min():.3f} .. "
            f"{pi.max():.3f} (uniform {gamma / pi.size:.3f})"
        )
    return policies


def _probe_norms(settings, train_features, collate, folder, device, precision) -> pd.DataFrame:
    """The LoRA and FT probes of the norm-ratio source (norms.csv in the study folder)."""
    from diagnostics.probes import run_probe
    from lisa_apps.models import load_model

    seed = settings.seed_list[0]
    tables = []
    for method in ("lora", "ft"):
        tables.append(
            run_probe(
                lambda: load_model(settings.model, seed=seed)[0],
                train_features,
                method,
                collate=collate,
                steps=settings.probe_steps,
                lora_rank=settings.lora_rank,
                batch_size=settings.batch_size,
                kinds=(settings.norm_kind,),
                reduce=(settings.norm_reduce,),
                seed=seed,
                device=device,
                precision=precision,
                progress=False,
            )
        )
    table = pd.concat(tables, ignore_index=True)
    folder.write_text("policies/norms.csv", table.to_csv(index=False))
    return table
