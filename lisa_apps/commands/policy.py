"""`lisa policy`: derive a SamplingPolicy (JSON) from block scores of a chosen source.

Sources (``--source``): ``norm-ratio`` (default; w_LoRA / w_FT from a norms table written by
``lisa diagnose``), ``grad-norm`` (mean block gradient norm over a few training batches),
``outlier`` (OWL's layerwise outlier ratio, or its mirror image) and ``file`` (scores you
supply). See docs/sources.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from lisa_apps.commands.arguments import (
    apply_runtime,
    check_gamma,
    load_data,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from lisa_apps.commands.checks import check_data_lengths, check_max_length, only_for

SOURCE_HELP = {
    "norm-ratio": "w_LoRA / w_FT per block from --norms (the paper's importance weight)",
    "grad-norm": "mean gradient norm of each block over --batches training batches of --model "
    "(forward and backward only, no optimizer)",
    "outlier": "OWL's layerwise outlier ratio of --model (|W| * ||X|| above --threshold times "
    "the block mean), favoured or --direction reverse",
    "file": "one score per block from --scores (CSV or JSON), checked against --model",
}
DEFAULT_BATCHES = 4
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 256

# flag -> (argparse dest, default, the sources it applies to)
_SOURCE_FLAGS = {
    "--norms": ("norms", None, ("norm-ratio",)),
    "--kind": ("kind", "weight", ("norm-ratio",)),
    "--lora-method": ("lora_method", "lora", ("norm-ratio",)),
    "--ft-method": ("ft_method", "ft", ("norm-ratio",)),
    "--reduce": ("reduce", "l2", ("norm-ratio", "grad-norm")),
    "--model": ("model", None, ("grad-norm", "outlier", "file")),
    "--data": ("data", "math", ("grad-norm", "outlier")),
    "--batches": ("batches", DEFAULT_BATCHES, ("grad-norm", "outlier")),
    "--batch-size": ("batch_size", DEFAULT_BATCH_SIZE, ("grad-norm", "outlier")),
    "--max-length": ("max_length", DEFAULT_MAX_LENGTH, ("grad-norm", "outlier")),
    "--seed": ("seed", 0, ("grad-norm", "outlier")),
    "--device": ("device", None, ("grad-norm", "outlier")),
    "--threshold": ("threshold", 5.0, ("outlier",)),
    "--direction": ("direction", "favour", ("outlier",)),
    "--scores": ("scores", None, ("file",)),
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa policy`."""
    from diagnostics.norms import NORM_KINDS, REDUCTIONS
    from diagnostics.sources import DIRECTIONS, available_sources
    from lisa_apps.models import DEFAULT_MODEL

    sources = available_sources()
    parser.add_argument(
        "--source",
        choices=sources,
        default="norm-ratio",
        help="where the block scores come from (default norm-ratio): "
        + "; ".join(f"{name}: {SOURCE_HELP.get(name, 'a registered source')}" for name in sources),
    )
    parser.add_argument("--gamma", type=positive_int, required=True, help="blocks per period")
    parser.add_argument(
        "--temperature", type=nonnegative_float, default=1.0, help="score exponent (default 1)"
    )
    parser.add_argument(
        "--floor",
        type=nonnegative_float,
        default=0.0,
        help="least inclusion probability of every block, at most gamma / blocks (default 0)",
    )
    parser.add_argument(
        "--out", default="policy.json", help="policy file to write (default policy.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ratio = parser.add_argument_group("norm-ratio")
    ratio.add_argument("--norms", default=None, help="norms.csv written by `lisa diagnose`")
    ratio.add_argument(
        "--kind", choices=NORM_KINDS, default="weight", help="norm kind to use (default weight)"
    )
    ratio.add_argument(
        "--reduce",
        choices=REDUCTIONS,
        default="l2",
        help="reduction (default l2); grad-norm: l2 or rms (divided by sqrt of the block size)",
    )
    ratio.add_argument("--lora-method", default="lora", help="method name of the LoRA rows")
    ratio.add_argument("--ft-method", default="ft", help="method name of the FT rows")
    model = parser.add_argument_group("grad-norm, outlier and file")
    model.add_argument(
        "--model",
        default=None,
        help=f"smollm2-135m, tiny-llama, ... or a local folder (default {DEFAULT_MODEL})",
    )
    model.add_argument(
        "--data", default="math", help="'math' (generated) or a .jsonl file; training split"
    )
    model.add_argument(
        "--batches",
        type=positive_int,
        default=DEFAULT_BATCHES,
        help=f"training batches to read (default {DEFAULT_BATCHES})",
    )
    model.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    model.add_argument(
        "--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH, help="tokens per example"
    )
    model.add_argument("--seed", type=nonnegative_int, default=0, help="order of the batches")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    model.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    model.add_argument(
        "--threshold",
        type=positive_float,
        default=5.0,
        help="outlier: M, an entry is an outlier above M times the block mean (default 5)",
    )
    model.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default="favour",
        help="outlier: favour outlier-heavy blocks (OwLore) or the reverse (default favour)",
    )
    model.add_argument("--scores", default=None, help="file: a .csv or .json of block scores")


def _given_flags(args: argparse.Namespace, source: str) -> None:
    """Refuse a flag of another source: it would be silently ignored."""
    wrong = [
        flag
        for flag, (dest, default, sources) in _SOURCE_FLAGS.items()
        if source not in sources and getattr(args, dest) != default
    ]
    if wrong:
        # Named with the sources of the first wrong flag (and the others that share them).
        sources = _SOURCE_FLAGS[wrong[0]][2]
        flags = [flag for flag in wrong if _SOURCE_FLAGS[flag][2] == sources]
        raise ValueError(
            only_for(flags, f"--source {' or '.join(sources)}", f"pass --source {sources[0]}")
        )


def _is_policy(path: Path) -> bool:
    """True for a sampling-policy JSON that lisa wrote (the only file --overwrite replaces)."""
    import json

    from diagnostics.policy import POLICY_FORMAT

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == POLICY_FORMAT


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check every input (and derive the cheap policies); the work writes the policy."""
    from lisa_apps.outputs import check_output_file

    _given_flags(args, args.source)
    out = check_output_file(args.out, overwrite=args.overwrite, owned=_is_policy, kind="policy")
    if args.source == "norm-ratio":
        return _norm_ratio(args, out)
    if args.source == "file":
        return _file(args, out)
    return _from_batches(args, out)


def _norm_ratio(args, out) -> Callable[[], int]:
    from diagnostics.policy import derive_policy
    from diagnostics.recorder import load_norms

    if args.norms is None:
        raise ValueError(
            "--source norm-ratio needs --norms (the norms.csv written by lisa diagnose)"
        )
    table = load_norms(args.norms)
    methods = set(table["method"])
    for flag, method in (("--lora-method", args.lora_method), ("--ft-method", args.ft_method)):
        if method not in methods:
            raise ValueError(
                f"{flag} {method}: {args.norms} has no rows of that method (it has "
                f"{sorted(methods)})"
            )
    for flag, column, value in (("--kind", "kind", args.kind), ("--reduce", "reduce", args.reduce)):
        present = sorted(set(table[column]))
        if value not in present:
            raise ValueError(
                f"{flag} {value}: {args.norms} recorded only {', '.join(present)}; pass one of "
                "those or record it with lisa diagnose"
            )
    num_blocks = int(table["block_index"].dropna().nunique())
    if num_blocks == 0:
        raise ValueError(
            f"--norms {args.norms} has no rows of blocks (every block_index is empty), so no "
            "policy can be derived; pass the norms.csv lisa diagnose wrote for a model's blocks"
        )
    if args.gamma > num_blocks:
        raise ValueError(
            f"--gamma {args.gamma} is more than the {num_blocks} blocks in {args.norms}; use "
            f"--gamma 1..{num_blocks}"
        )
    sidecar = table.attrs.get("sidecar", {})
    try:
        policy = derive_policy(
            table[table["method"] == args.lora_method].assign(method="lora"),
            table[table["method"] == args.ft_method].assign(method="ft"),
            args.gamma,
            temperature=args.temperature,
            floor=args.floor,
            kind=args.kind,
            reduce=args.reduce,
            signature=sidecar.get("layer_signature"),
            source=str(args.norms),
            model=sidecar.get("model_name"),
        )
    except ValueError as error:
        raise ValueError(f"cannot derive a policy from {args.norms}: {error}") from None
    policy.provenance["source_settings"] |= {
        "lora_method": args.lora_method,
        "ft_method": args.ft_method,
    }
    return lambda: _write(policy, out, "w_lora / w_ft")


def _model_info(args):
    from lisa_apps.models import DEFAULT_MODEL, inspect_model

    args.model = args.model or DEFAULT_MODEL
    info = inspect_model(args.model)
    check_gamma(args.gamma, info.num_blocks, args.model)
    return info


def _file(args, out) -> Callable[[], int]:
    from diagnostics.policy import policy_from_scores
    from diagnostics.sources import FileSource

    if args.scores is None:
        raise ValueError("--source file needs --scores (a .csv or .json with one score per block)")
    info = _model_info(args)
    source = FileSource(args.scores)
    try:
        scores = source.block_scores()
        if scores.size != info.num_blocks:
            raise ValueError(
                f"{args.scores}: {scores.size} scores for {args.model}, which has "
                f"{info.num_blocks} blocks; give exactly one score per block"
            )
        policy = policy_from_scores(
            scores, args.gamma, source="file", source_settings=source.settings(),
            temperature=args.temperature, floor=args.floor, signature=info.layer_signature,
            model=args.model,
        )  # fmt: skip
    except FileNotFoundError:
        raise FileNotFoundError(f"--scores {args.scores} does not exist") from None
    except ValueError as error:
        raise ValueError(f"--scores {error}") from None
    return lambda: _write(policy, out, "file")


def _from_batches(args, out) -> Callable[[], int]:
    from diagnostics.sources import make_source

    apply_runtime(args)
    info = _model_info(args)
    check_max_length(args.max_length, info)
    examples = load_data(args.data, split="train", num_examples=None, seed=args.seed)
    notes = check_data_lengths(
        info, data=args.data, max_length=args.max_length, train_examples=examples
    )
    if args.source == "grad-norm":
        source = make_source("grad-norm", reduce=args.reduce)
    else:
        source = make_source("outlier", threshold=args.threshold, direction=args.direction)

    def work() -> int:
        from diagnostics.runtime import resolve_device
        from diagnostics.sources import policy_from_source
        from lisa_apps.data import DataCollator, tokenize_examples
        from lisa_apps.models import load_model
        from lisa_apps.study.policies import score_batches

        for note in notes:
            print(f"note: {note}")
        model, tokenizer = load_model(args.model, seed=args.seed)
        model.to(resolve_device(args.device))
        features = tokenize_examples(examples, tokenizer, max_length=args.max_length)
        batches = score_batches(features, DataCollator(tokenizer), count=args.batches,
                                batch_size=args.batch_size, seed=args.seed)  # fmt: skip
        policy = policy_from_source(
            source, args.gamma, model=model, batches=batches, temperature=args.temperature,
            floor=args.floor, model_name=args.model,
        )  # fmt: skip
        policy.provenance.update(
            data=args.data, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed
        )
        return _write(policy, out, args.source)

    return work


def _write(policy, out, label: str) -> int:
    path = policy.to_json(out)
    scores = policy.provenance["scores"]
    print(f"scores ({label}):", " ".join(f"{s:.4g}" for s in scores))
    print(
        "inclusion probabilities:",
        " ".join(f"{p:.3f}" for p in policy.inclusion_probabilities),
    )
    print(f"wrote {path}")
    return 0
