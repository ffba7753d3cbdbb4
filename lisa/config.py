"""LisaConfig: what LISA trains and how often it re-draws, serialisable whatever the sampler."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from lisa.samplers import Sampler, available_samplers
from lisa.validation import check_int

__all__ = ["STATE_POLICIES", "LisaConfig", "sampler_spec"]

STATE_POLICIES = ("drop", "reset", "keep")


def _is_sampler(obj: object) -> bool:
    """Duck-typed check of the Sampler protocol (num_blocks and sample)."""
    return callable(getattr(obj, "sample", None)) and isinstance(
        getattr(obj, "num_blocks", None), int
    )


def _json_ready(value: Any, where: str) -> Any:
    """``value`` with numpy arrays and scalars and tuples as plain JSON types; raise otherwise."""
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"{where} holds {value!r} ({type(value).__name__}), which JSON cannot store; pass "
        "numbers, strings, lists or dicts"
    )


def sampler_spec(sampler: Sampler) -> tuple[str, dict[str, Any]]:
    """The registered name and keyword arguments that rebuild ``sampler`` with make_sampler.

    Built-in samplers and any sampler whose class defines ``spec() -> (name, kwargs)`` have
    one; the name must be registered (register_sampler) so another process can rebuild it.

    Raises:
        ValueError: the sampler has no ``spec()``, or names an unregistered sampler.

    Example:
        >>> from lisa.samplers import make_sampler
        >>> sampler_spec(make_sampler("weighted", 3, inclusion_probabilities=[1.0, 0.5, 0.5]))
        ('weighted', {'inclusion_probabilities': [1.0, 0.5, 0.5]})
    """
    spec = getattr(sampler, "spec", None)
    if not callable(spec):
        raise ValueError(
            f"{type(sampler).__name__} cannot be written as JSON: give its class a method "
            "spec() returning (registered name, keyword arguments), or register it with "
            "register_sampler and pass LisaConfig(sampler=name, sampler_options={...})"
        )
    name, options = spec()
    if name not in available_samplers():
        raise ValueError(
            f"{type(sampler).__name__}.spec() names sampler {name!r}, which is not registered; "
            "register it with register_sampler first"
        )
    return name, _json_ready(dict(options), f"{type(sampler).__name__}.spec()")


@dataclass(frozen=True)
class LisaConfig:
    """What LISA trains and how often it re-draws.

    Each period of ``interval`` optimizer steps trains E, H, extras (each unless switched off)
    and ``gamma`` sampled blocks; every other parameter is frozen. The config is JSON-able
    whatever the sampler (``to_dict`` / ``from_dict``): a named sampler is stored as its name
    and ``sampler_options``, a sampler instance as the name and options of its ``spec()``.

    Args:
        gamma: blocks active per period; 0 trains only E, H and extras (the engine says so).
            A sampler that has a ``gamma`` of its own must agree with it; one without (e.g.
            "bernoulli") decides the count itself and this field is ignored.
        interval: K, optimizer steps per period (>= 1).
        sampler: a registered sampler name, built as ``make_sampler(name, N, gamma=gamma,
            **sampler_options)`` (gamma only where the factory takes it), or a Sampler
            instance built for the model's block count.
        sampler_options: keyword arguments of a named sampler, JSON-able (numpy arrays are
            turned into lists), e.g. ``{"inclusion_probabilities": [...]}`` for "weighted".
        seed: seed of the engine's ``np.random.Generator(np.random.PCG64(seed))``; every rank
            must use the same seed so that every rank draws the same blocks.
        state_policy: "drop" frees grads and optimizer state of every parameter that leaves the
            active set; "reset" clears all optimizer state (E and H included) at every switch;
            "keep" frees optimizer state of nothing (ablations only).
        train_embeddings: train E every step. On a tied model the shared matrix is E.
        train_head: train H every step (no separate parameter on a tied model).
        train_extras: train the parameters outside E, H and the blocks (final norm, ...).
        blocks_path: dotted path of the blocks ModuleList, for models LayerMap cannot map.
        layer_signature: the ``lisa.signature.layer_signature`` of the model this config was
            made for (a policy records it); the engine refuses a model whose blocks differ.

    Example:
        >>> config = LisaConfig(gamma=1, sampler="weighted",
        ...                     sampler_options={"inclusion_probabilities": [0.5, 0.5]})
        >>> LisaConfig.from_dict(config.to_dict()) == config
        True
    """

    gamma: int = 2
    interval: int = 20
    sampler: str | Sampler = "uniform"
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    state_policy: Literal["drop", "reset", "keep"] = "drop"
    train_embeddings: bool = True
    train_head: bool = True
    train_extras: bool = True
    blocks_path: str | None = None
    layer_signature: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        check_int("gamma", self.gamma, minimum=0, hint="blocks trained per period, e.g. gamma=2")
        check_int("interval", self.interval, hint="optimizer steps between switches, e.g. 20")
        check_int("seed", self.seed, minimum=0)
        if self.state_policy not in STATE_POLICIES:
            raise ValueError(
                f"state_policy={self.state_policy!r} is unknown; use one of {STATE_POLICIES}"
            )
        for name in ("train_embeddings", "train_head", "train_extras"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if not isinstance(self.sampler_options, Mapping):
            raise ValueError(
                f"sampler_options={self.sampler_options!r} must be a dict of keyword arguments"
            )
        object.__setattr__(
            self, "sampler_options", _json_ready(self.sampler_options, "sampler_options")
        )
        if isinstance(self.sampler, str):
            if self.sampler not in available_samplers():
                raise ValueError(
                    f"sampler={self.sampler!r} is not registered; use one of "
                    f"{available_samplers()} or pass a Sampler instance "
                    "(lisa.samplers.make_sampler / register_sampler)"
                )
        elif not _is_sampler(self.sampler):
            raise ValueError(
                f"sampler={self.sampler!r} is neither a registered name nor a Sampler "
                "(an object with num_blocks and sample(rng))"
            )
        else:
            if self.sampler_options:
                raise ValueError(
                    "sampler_options apply to a sampler given by name; a Sampler instance "
                    "carries its own settings, so drop sampler_options"
                )
            sampler_gamma = getattr(self.sampler, "gamma", None)
            if sampler_gamma is not None and sampler_gamma != self.gamma:
                raise ValueError(
                    f"gamma={self.gamma} but the sampler draws gamma={sampler_gamma} blocks; "
                    f"pass LisaConfig(gamma={sampler_gamma}, sampler=...) so both agree"
                )
        if self.blocks_path is not None and (
            not isinstance(self.blocks_path, str) or not self.blocks_path
        ):
            raise ValueError(
                f"blocks_path={self.blocks_path!r} must be a non-empty dotted path such as "
                "'model.layers', or None to discover it"
            )
        if self.layer_signature is not None:
            if not isinstance(self.layer_signature, Mapping) or not {
                "num_blocks",
                "group_names",
                "blocks",
            } <= set(self.layer_signature):
                raise ValueError(
                    "layer_signature must be None or a dict from lisa.signature.layer_signature"
                )
            object.__setattr__(
                self, "layer_signature", _json_ready(self.layer_signature, "layer_signature")
            )

    @property
    def sampler_name(self) -> str:
        """The registered name of the sampler (an instance's from its ``spec()``)."""
        return self.sampler if isinstance(self.sampler, str) else sampler_spec(self.sampler)[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; a sampler instance is stored as the name and options of its spec().

        Raises:
            ValueError: the sampler is an instance without a ``spec()`` (see ``sampler_spec``).

        Example:
            >>> from lisa.samplers import make_sampler
            >>> config = LisaConfig(gamma=1, sampler=make_sampler("fixed", 4, blocks=[2]))
            >>> config.to_dict()["sampler"], config.to_dict()["sampler_options"]
            ('fixed', {'blocks': [2]})
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if not isinstance(self.sampler, str):
            values["sampler"], values["sampler_options"] = sampler_spec(self.sampler)
        values["sampler_options"] = dict(values["sampler_options"])
        json.dumps(values)  # every field is JSON-able by construction; fail here, not later
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LisaConfig:
        """Rebuild a config from ``to_dict`` output (e.g. read back from JSON).

        Raises:
            ValueError: an unknown field, or a field the config refuses.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"a LisaConfig dict is expected, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LisaConfig fields {unknown}; known: {sorted(known)}")
        return cls(**dict(values))
