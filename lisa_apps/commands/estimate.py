"""`lisa estimate MODEL`: a run's memory for FT, LoRA, LISA and BAdam, before loading a weight.

The model is built on the meta device from its config (a named family configuration, a tiny
model, or a folder with config.json), so even a 70B model takes seconds and no weight memory.
Weights, grads, optimizer state and master copies are exact; activations are an estimate.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa estimate`."""
    from diagnostics.runtime import PRECISIONS
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LORA_RANK
    from lisa_apps.commands.arguments import csv_choices, nonnegative_int, positive_int
    from lisa_apps.estimate.accounting import METHODS

    parser.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="a family name (llama-2-7b, llama-3.1-8b, mistral-7b, ...; see --list), a tiny "
        "model, or a folder with config.json (weights are not read)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the named configurations and exit"
    )
    parser.add_argument(
        "--methods",
        type=csv_choices(METHODS),
        default=None,
        help=f"comma list of {', '.join(METHODS)} (default: all; without badam under --fsdp)",
    )
    parser.add_argument(
        "--precision",
        type=csv_choices(PRECISIONS),
        default=PRECISIONS,
        help="comma list of float32 (everything float32), bf16-mixed (bfloat16 autocast over "
        "float32 weights, grads and state), bf16 (everything bfloat16) (default: all three)",
    )
    lisa = parser.add_argument_group("LISA and LoRA")
    lisa.add_argument(
        "--gamma",
        type=nonnegative_int,
        default=None,  # None: not given (refused when --methods leaves lisa out); then the default
        help=f"LISA blocks trained at a time (default {DEFAULT_GAMMA})",
    )
    lisa.add_argument(
        "--freeze-embeddings", action="store_true", help="LISA without the embedding (E)"
    )
    lisa.add_argument("--freeze-head", action="store_true", help="LISA without the head (H)")
    lisa.add_argument(
        "--freeze-extras", action="store_true", help="LISA without the extras (final norm, ...)"
    )
    lisa.add_argument(
        "--lora-rank",
        type=positive_int,
        default=None,  # None: not given (refused when --methods leaves lora out); then the default
        help=f"LoRA rank on every linear layer of the blocks (default {DEFAULT_LORA_RANK})",
    )
    run = parser.add_argument_group("the step (activation estimate) and the ranks")
    run.add_argument(
        "--batch-size", type=positive_int, default=1, help="sequences per device (default 1)"
    )
    run.add_argument(
        "--seq-len", type=positive_int, default=512, help="tokens per sequence (default 512)"
    )
    run.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="activation checkpointing: keep block inputs, recompute one block at a time",
    )
    run.add_argument(
        "--fsdp",
        type=positive_int,
        default=1,
        metavar="W",
        help="bytes of one rank under FSDP2 over W ranks (dim-0 shards; default 1: no FSDP)",
    )
    run.add_argument(
        "--offload",
        action="store_true",
        help="also print what stays on the device under FSDP2's CPU offload (lisa train "
        "--offload): activations and one unit gathered",
    )
    parser.add_argument(
        "--blocks-path",
        default=None,
        help="dotted path of the blocks list, for models the layer map cannot find",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")


def format_list() -> str:
    """The named configurations: name, model type, blocks, width, vocabulary, tying."""
    from lisa_apps.estimate.configs import family_names, family_summary
    from lisa_apps.tiny import TINY_MODELS

    lines = [f"{'name':<15}  {'type':<8}  {'blocks':>6}  {'hidden':>6}  {'vocab':>7}  tied"]
    for name in family_names():
        info = family_summary(name)
        lines.append(
            f"{name:<15}  {info['model_type']:<8}  {info['num_hidden_layers']:>6}  "
            f"{info['hidden_size']:>6}  {info['vocab_size']:>7}  "
            f"{'yes' if info['tie_word_embeddings'] else 'no'}"
        )
    lines.append(f"tiny models: {', '.join(TINY_MODELS)}; or a folder with config.json")
    return "\n".join(lines)


def _refuse_flags_of_other_methods(args: argparse.Namespace, methods) -> None:
    """Refuse --gamma without lisa and --lora-rank without lora in --methods; fill defaults."""
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LORA_RANK
    from lisa_apps.commands.checks import only_for

    for flag, name, method, default in (
        ("--gamma", "gamma", "lisa", DEFAULT_GAMMA),
        ("--lora-rank", "lora_rank", "lora", DEFAULT_LORA_RANK),
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif method not in methods:
            raise ValueError(only_for([flag], f"{method} rows", f"add {method} to --methods"))


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check every input and compute the estimate (meta device: seconds, no weights)."""
    if args.list:

        def show_list() -> int:
            print(format_list())
            return 0

        return show_list
    if args.model is None:
        raise ValueError(
            "give MODEL: a name from `lisa estimate --list`, a tiny model or a folder with "
            "config.json"
        )
    from lisa_apps.commands.arguments import check_gamma
    from lisa_apps.estimate.accounting import METHODS, Setup
    from lisa_apps.estimate.activations import model_dims
    from lisa_apps.estimate.configs import resolve_config
    from lisa_apps.estimate.plan import Workload, estimate, suggestions
    from lisa_apps.estimate.report import format_suggestion, format_table, rows_json

    notes = []
    methods = args.methods
    if methods is None:
        methods = METHODS
        if args.fsdp > 1:
            methods = tuple(m for m in METHODS if m != "badam")
            notes.append(
                "BAdam left out: it has no FSDP2 path (it distributes with DeepSpeed ZeRO-3)"
            )
    elif "badam" in methods and args.fsdp > 1:
        raise ValueError(
            f"--methods badam with --fsdp {args.fsdp}: BAdam has no FSDP2 path (it distributes "
            "with DeepSpeed ZeRO-3); drop badam from --methods or use --fsdp 1"
        )
    _refuse_flags_of_other_methods(args, methods)
    source = resolve_config(args.model)
    if "lisa" in methods:
        check_gamma(args.gamma, model_dims(source.config).num_blocks, args.model)
    setups = [
        Setup(
            method,
            precision,
            gamma=args.gamma if method == "lisa" else None,
            lora_rank=args.lora_rank if method == "lora" else None,
            train_embeddings=not args.freeze_embeddings,
            train_head=not args.freeze_head,
            train_extras=not args.freeze_extras,
            fsdp_ranks=args.fsdp,
        )
        for precision in args.precision
        for method in methods
    ]
    workload = Workload(args.batch_size, args.seq_len, args.gradient_checkpointing)
    rows = estimate(
        source.config, setups, workload, model_name=source.name, blocks_path=args.blocks_path
    )
    found = suggestions(source.config, rows, workload, blocks_path=args.blocks_path)

    def work() -> int:
        if args.json:
            print(rows_json(rows))
            return 0
        print(format_table(rows, offload=args.offload))
        for suggestion in found:
            print(format_suggestion(suggestion))
        for note in notes:
            print(f"note: {note}")
        return 0

    return work
