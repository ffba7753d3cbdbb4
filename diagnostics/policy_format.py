"""SamplingPolicy's file format: the dataclass, its checks, and its JSON form (never pickle).

A policy holds per-block inclusion probabilities pi (each in [0, 1], summing to gamma) for the
``weighted`` sampler, its layer names, a compact layer signature (block count, names, parameter
shapes), the ``train_*`` flags for embeddings, head and extras, and its provenance. It is saved
as JSON and refuses to load onto a model whose layer map differs. Policies are derived in
:mod:`diagnostics.policy`, which re-exports everything here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from diagnostics.files import atomic_write_text
from lisa.config import LisaConfig
from lisa.layers import LayerMap, block_group
from lisa.samplers import Sampler, make_sampler
from lisa.signature import check_layer_signature

__all__ = ["POLICY_FORMAT", "SamplingPolicy"]

POLICY_FORMAT = "lisa-sampling-policy"
_POLICY_VERSION = 1
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class SamplingPolicy:
    """Per-block inclusion probabilities for the ``weighted`` sampler, with provenance.

    Args:
        inclusion_probabilities: pi over the N blocks, each in [0, 1], sum = gamma.
        gamma: blocks drawn per period.
        layer_names: the block group names ("block.0" ... "block.{N-1}").
        signature: ``layer_signature`` of the model it was derived on (None: only the block
            count and names are checked).
        provenance: how it was derived (settings, source, scores, date, versions).
        train_embeddings, train_head, train_extras: whether E, H and extras train every
            period (the paper: E and H always; mirrors LisaConfig's fields).

    Example:
        >>> policy = SamplingPolicy(np.array([1.0, 0.5, 0.5]), gamma=2,
        ...                         layer_names=("block.0", "block.1", "block.2"))
        >>> policy.to_sampler().gamma
        2
    """

    inclusion_probabilities: np.ndarray
    gamma: int
    layer_names: tuple[str, ...]
    signature: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    train_embeddings: bool = True
    train_head: bool = True
    train_extras: bool = True

    def __post_init__(self) -> None:
        pi = np.array(self.inclusion_probabilities, dtype=np.float64).reshape(-1)
        if pi.size == 0:
            raise ValueError("inclusion_probabilities is empty; a policy needs at least one block")
        if not np.all(np.isfinite(pi)) or pi.min() < 0 or pi.max() > 1 + 1e-12:
            raise ValueError(
                f"inclusion_probabilities must lie in [0, 1], got min {pi.min()} and max {pi.max()}"
            )
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, int | np.integer):
            raise ValueError(f"gamma={self.gamma!r} must be an integer")
        if not 1 <= self.gamma <= pi.size:
            raise ValueError(f"gamma={self.gamma} must lie in 1..{pi.size} (the number of blocks)")
        if abs(pi.sum() - self.gamma) > _SUM_TOLERANCE:
            raise ValueError(
                f"inclusion_probabilities sum to {pi.sum():.8g}, not gamma={self.gamma}; "
                "derive them with inclusion_probabilities_from_scores"
            )
        names = tuple(str(n) for n in self.layer_names)
        if len(names) != pi.size:
            raise ValueError(
                f"layer_names has {len(names)} entries but there are {pi.size} probabilities"
            )
        if self.signature is not None and self.signature.get("num_blocks") != pi.size:
            raise ValueError(
                f"signature describes {self.signature.get('num_blocks')} blocks, "
                f"the policy has {pi.size}"
            )
        pi = np.clip(pi, 0.0, 1.0)
        pi.setflags(write=False)
        object.__setattr__(self, "inclusion_probabilities", pi)
        object.__setattr__(self, "gamma", int(self.gamma))
        object.__setattr__(self, "layer_names", names)
        object.__setattr__(self, "provenance", dict(self.provenance))

    @property
    def num_blocks(self) -> int:
        return int(self.inclusion_probabilities.size)

    def to_sampler(self) -> Sampler:
        """The ``weighted`` sampler (exact fixed-size design) with these probabilities."""
        return make_sampler(
            "weighted", self.num_blocks, inclusion_probabilities=self.inclusion_probabilities
        )

    def to_lisa_config(
        self, *, interval: int = 20, seed: int = 0, state_policy: str = "drop"
    ) -> LisaConfig:
        """A LisaConfig that samples with this policy and trains E/H/extras as it says.

        The config names the ``weighted`` sampler with these probabilities (so it is JSON-able)
        and carries the policy's layer signature: the engine refuses a model whose blocks
        differ from those the policy was derived on.

        Example:
            >>> policy = SamplingPolicy(np.array([0.5, 1.0, 0.5]), 2, ("block.0", "block.1", "block.2"))
            >>> config = policy.to_lisa_config(interval=5)
            >>> (config.gamma, config.interval, config.sampler, config.sampler_options)
            (2, 5, 'weighted', {'inclusion_probabilities': [0.5, 1.0, 0.5]})
        """
        return LisaConfig(
            gamma=self.gamma,
            interval=interval,
            sampler="weighted",
            sampler_options={"inclusion_probabilities": self.inclusion_probabilities.tolist()},
            seed=seed,
            state_policy=state_policy,
            train_embeddings=self.train_embeddings,
            train_head=self.train_head,
            train_extras=self.train_extras,
            layer_signature=self.signature,
        )

    def check_compatible(self, target: LayerMap | nn.Module) -> None:
        """Raise ValueError naming the first difference between the policy's layers and target's."""
        layer_map = target if isinstance(target, LayerMap) else LayerMap.from_model(target)
        if layer_map.num_blocks != self.num_blocks:
            raise ValueError(
                f"the policy is for {self.num_blocks} blocks but the model has "
                f"{layer_map.num_blocks}; derive a policy on this model"
            )
        expected_names = tuple(block_group(i) for i in range(layer_map.num_blocks))
        if expected_names != self.layer_names:
            raise ValueError(f"policy layer names {self.layer_names} differ from {expected_names}")
        if self.signature is not None:
            check_layer_signature(layer_map, self.signature, what="the policy")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``to_json`` writes)."""
        return {
            "format": POLICY_FORMAT,
            "version": _POLICY_VERSION,
            "gamma": self.gamma,
            "inclusion_probabilities": [float(p) for p in self.inclusion_probabilities],
            "layer_names": list(self.layer_names),
            "train_embeddings": self.train_embeddings,
            "train_head": self.train_head,
            "train_extras": self.train_extras,
            "signature": self.signature,
            "provenance": self.provenance,
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the policy as JSON atomically (temporary file + os.replace)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "policy") -> SamplingPolicy:
        """Build a policy from ``to_dict`` output, with errors naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != POLICY_FORMAT:
            raise ValueError(
                f"{where}: 'format' is {data.get('format')!r}, expected {POLICY_FORMAT!r}"
            )
        if data.get("version") != _POLICY_VERSION:
            raise ValueError(f"{where}: unsupported policy version {data.get('version')!r}")
        for key in ("gamma", "inclusion_probabilities", "layer_names"):
            if key not in data:
                raise ValueError(f"{where}: missing field {key!r}")
        pi = data["inclusion_probabilities"]
        if not isinstance(pi, list) or not all(
            isinstance(p, int | float) and not isinstance(p, bool) for p in pi
        ):
            raise ValueError(f"{where}: 'inclusion_probabilities' must be a list of numbers")
        names = data["layer_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}: 'layer_names' must be a list of strings")
        signature = data.get("signature")
        if signature is not None and not (
            isinstance(signature, dict)
            and {"num_blocks", "group_names", "blocks"} <= set(signature)
        ):
            raise ValueError(f"{where}: 'signature' must be null or a layer_signature object")
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise ValueError(f"{where}: 'provenance' must be an object")
        flags = {}
        for key in ("train_embeddings", "train_head", "train_extras"):
            value = data.get(key, True)
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key!r} must be true or false, got {value!r}")
            flags[key] = value
        try:
            return cls(
                inclusion_probabilities=np.array(pi, dtype=np.float64),
                gamma=data["gamma"],
                layer_names=tuple(names),
                signature=signature,
                provenance=provenance,
                **flags,
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SamplingPolicy:
        """Load a policy written by ``to_json`` (JSON only), validating every field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data, where=str(path))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
