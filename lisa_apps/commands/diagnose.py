"""`lisa diagnose`: LoRA and FT probe runs, norms table, skew summary, policy and plots in one go."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable

from lisa_apps.commands.arguments import (
    add_data_options,
    add_distributed,
    add_output,
    add_runtime,
    apply_runtime,
    check_distributed,
    check_gamma,
    claim_output,
    csv_choices,
    load_data,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from lisa_apps.commands.checks import check_data_lengths, check_lora_rank, check_max_length

DEFAULT_STEPS = 30
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 128
DEFAULT_NUM_EXAMPLES = 200
DEFAULT_KINDS = ("weight", "trainable", "delta")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa diagnose`."""
    from diagnostics.norms import NORM_KINDS, REDUCTIONS
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_LEARNING_RATES, DEFAULT_LORA_RANK
    from lisa_apps.models import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"smollm2-135m, tiny-llama, ... or a local folder (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--data",
        default="math",
        help="'math' (generated) or a data set file, folder or hub name (see docs/data.md)",
    )
    add_data_options(parser, held_out=False)
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        help=f"optimizer steps per probe (default {DEFAULT_STEPS})",
    )
    add_output(parser, "diagnostics-out", "norms, skew, policy and plots")
    parser.add_argument(
        "--lr-lora",
        type=positive_float,
        default=DEFAULT_LEARNING_RATES["lora"],
        help=f"LoRA probe learning rate (default {DEFAULT_LEARNING_RATES['lora']:g})",
    )
    parser.add_argument(
        "--lr-ft",
        type=positive_float,
        default=DEFAULT_LEARNING_RATES["ft"],
        help=f"FT probe learning rate (default {DEFAULT_LEARNING_RATES['ft']:g})",
    )
    parser.add_argument(
        "--rank",
        type=positive_int,
        default=DEFAULT_LORA_RANK,
        help=f"LoRA rank, alpha = 2 * rank (default {DEFAULT_LORA_RANK})",
    )
    parser.add_argument(
        "--gamma",
        type=positive_int,
        default=DEFAULT_GAMMA,
        help=f"blocks per period for the policy (default {DEFAULT_GAMMA})",
    )
    parser.add_argument(
        "--temperature", type=nonnegative_float, default=1.0, help="policy score exponent"
    )
    parser.add_argument(
        "--floor", type=nonnegative_float, default=0.0, help="policy minimum probability"
    )
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH, help="tokens per example"
    )
    parser.add_argument(
        "--num-examples",
        type=positive_int,
        default=DEFAULT_NUM_EXAMPLES,
        help="training examples to draw batches from",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument(
        "--kinds",
        type=csv_choices(NORM_KINDS),
        default=DEFAULT_KINDS,
        help="comma list of norm kinds (default weight,trainable,delta)",
    )
    parser.add_argument(
        "--reduce",
        type=csv_choices(REDUCTIONS),
        default=("l2",),
        help="comma list of reductions: l2,rms (default l2)",
    )
    parser.add_argument(
        "--policy-kind",
        choices=NORM_KINDS,
        default=None,
        help="norm kind the policy is derived from (default: the first of --kinds)",
    )
    parser.add_argument("--record-every", type=positive_int, default=1)
    parser.add_argument(
        "--probes",
        type=csv_choices(("lora", "ft", "lora-eh")),
        default=("lora", "ft"),
        help="probes to run: lora,ft (default) and lora-eh (LoRA whose embedding and head also "
        "train in full, at --lr-lora; see docs/sources.md)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_runtime(parser, auto_precision=True)
    add_distributed(
        parser,
        "fsdp2 = the FT probe sharded by FSDP2 and the LoRA probe as --lora-probe says, ddp = "
        "both with DDP; --batch-size is the global batch",
    )
    parser.add_argument(
        "--lora-probe",
        choices=("auto", "replicated", "sharded"),
        default="auto",
        help="under --distributed fsdp2, the LoRA probe's frozen base: replicated (DDP, a full "
        "copy per rank), sharded (FSDP2, loaded shard by shard from a safetensors folder) or "
        "auto (replicated when `lisa estimate` says a copy fits the rank's memory; default)",
    )


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check model, data, settings and --out without loading weights; return the probes."""
    from lisa_apps.models import inspect_model
    from lisa_apps.pipeline import DiagnoseSettings
    from lisa_apps.training import resolve_precision

    check_distributed(args, "diagnose")
    if args.lora_probe != "auto" and args.distributed != "fsdp2":
        raise ValueError(
            f"--lora-probe {args.lora_probe} applies to --distributed fsdp2 only (one process "
            "and ddp hold a full copy); drop it or add --distributed fsdp2 under torchrun"
        )
    device = apply_runtime(args)
    info = inspect_model(args.model)
    check_gamma(args.gamma, info.num_blocks, args.model)
    check_max_length(args.max_length, info)
    check_lora_rank(args.rank, info, "--rank")
    if args.policy_kind is not None and args.policy_kind not in args.kinds:
        raise ValueError(
            f"--policy-kind {args.policy_kind} is not among --kinds {','.join(args.kinds)}; "
            "record it too"
        )
    if not {"lora", "ft"} <= set(args.probes):
        raise ValueError(
            f"--probes {','.join(args.probes)} must include lora and ft: the policy is the ratio "
            "of their norms"
        )
    settings = DiagnoseSettings(
        steps=args.steps,
        lr_lora=args.lr_lora,
        lr_ft=args.lr_ft,
        rank=args.rank,
        gamma=args.gamma,
        temperature=args.temperature,
        floor=args.floor,
        batch_size=args.batch_size,
        max_length=args.max_length,
        kinds=args.kinds,
        reduce=args.reduce,
        policy_kind=args.policy_kind,
        record_every=args.record_every,
        seed=args.seed,
        device=str(device),
        precision=resolve_precision(args.precision, device),
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
        distributed=args.distributed,
        probes=args.probes,
        lora_probe=args.lora_probe,
    )
    if args.floor * info.num_blocks > args.gamma + 1e-12:
        raise ValueError(
            f"--floor {args.floor} is infeasible: {info.num_blocks} blocks each with at least "
            f"that probability need gamma >= {args.floor * info.num_blocks:g}; use --floor <= "
            f"{args.gamma / info.num_blocks:g}"
        )
    examples = load_data(
        args.data, split="train", num_examples=args.num_examples, seed=args.seed, args=args
    )
    notes = check_data_lengths(
        info, data=args.data, max_length=args.max_length, train_examples=examples
    )
    command = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    main_rank, folder = claim_output(args, "lisa diagnose")

    def work() -> int:
        import pandas as pd

        from diagnostics.skew import side_by_side
        from lisa_apps.models import load_tokenizer
        from lisa_apps.pipeline import diagnose
        from lisa_apps.recipes import RECIPE_FILE, resolved_recipe
        from lisa_apps.training.distributed import run_in_process_group

        if main_rank:
            print(
                f"model {args.model}: {info.num_blocks} blocks; {len(examples)} examples; "
                f"{args.steps} steps per probe on {settings.device} ({settings.precision})"
                + (f", {args.distributed}" if args.distributed else "")
            )
            for note in notes:
                print(f"note: {note}")

        def run():
            with folder if folder is not None else contextlib.nullcontext():
                if folder is not None:  # the resolved options: --config of a repeat
                    folder.write_text(RECIPE_FILE, resolved_recipe(args))
                tokenizer = load_tokenizer(args.model)
                return diagnose(
                    args.model, tokenizer, examples, folder, settings, model_name=args.model,
                    command=command,
                )  # fmt: skip

        diagnosis = run_in_process_group(run, device) if args.distributed else run()
        if args.distributed:
            rank = os.environ.get("RANK", "0")
            print(
                f"rank {rank}: peak memory "
                + ", ".join(
                    f"{method} probe {peak / 2**20:,.0f} MiB"
                    for method, peak in diagnosis.peak_memory_bytes.items()
                )
            )
        if not main_rank:
            return 0
        for method in diagnosis.losses:
            losses = diagnosis.losses[method]
            print(
                f"{method} probe: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                f"{diagnosis.seconds[method]:.0f} s, peak memory "
                f"{diagnosis.peak_memory_bytes[method] / 2**20:,.0f} MiB"
            )
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(side_by_side(diagnosis.summary).to_string())
        print(
            "policy inclusion probabilities:",
            " ".join(f"{p:.3f}" for p in diagnosis.policy.inclusion_probabilities),
        )
        print(
            f"wrote {', '.join(diagnosis.files)} to {args.out} in "
            f"{diagnosis.seconds['total']:.0f} s"
        )
        return 0

    return work
