"""`lisa demo`: the main job. Diagnose the model, derive a policy, fine-tune with LISA, report.

On the embedded default (SmolLM2-135M-Instruct) with the default budget it fits in about ten
minutes on two CPU cores: two 20-step probes, then 60 LISA steps on generated maths problems,
with held-out loss and exact-match accuracy before and after. Under torchrun with
--distributed, the probes run as `lisa diagnose --distributed` runs them and the LISA run as
`lisa train --distributed`; rank 0 alone writes --out (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable

from lisa_apps.commands.arguments import (
    add_distributed,
    add_output,
    add_runtime,
    apply_runtime,
    check_distributed,
    check_gamma,
    claim_output,
    load_data,
    nonnegative_int,
    positive_float,
    positive_int,
)
from lisa_apps.commands.checks import check_data_lengths, check_max_length

DEFAULT_PROBE_STEPS = 20
DEFAULT_TRAIN_STEPS = 60
DEFAULT_TRAIN_EXAMPLES = 1000
DEFAULT_EVAL_EXAMPLES = 32
# The probes must see whole answers: with SmolLM2's chat template the generated maths problems
# run to about 176 tokens (128 cut the answers of 228 of the 1000 training problems); the
# training length fits them all, so the probes use it too.
DEFAULT_PROBE_MAX_LENGTH = 256
DEFAULT_MAX_LENGTH = 256


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa demo`."""
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_INTERVAL, DEFAULT_LEARNING_RATES
    from lisa_apps.models import DEFAULT_MODEL

    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name or folder (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--data", default="math", help="'math' (generated) or a .jsonl file")
    add_output(parser, "runs/demo", "diagnose/, train/ and report.json")
    parser.add_argument(
        "--probe-steps",
        type=positive_int,
        default=DEFAULT_PROBE_STEPS,
        help=f"steps of each diagnostic probe (default {DEFAULT_PROBE_STEPS})",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_TRAIN_STEPS,
        help=f"LISA fine-tuning steps (default {DEFAULT_TRAIN_STEPS})",
    )
    parser.add_argument(
        "--gamma",
        type=positive_int,
        default=DEFAULT_GAMMA,
        help=f"blocks per period (default {DEFAULT_GAMMA})",
    )
    parser.add_argument(
        "--interval",
        type=positive_int,
        default=DEFAULT_INTERVAL,
        help=f"steps per period K (default {DEFAULT_INTERVAL})",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=f"LISA learning rate (default {DEFAULT_LEARNING_RATES['lisa']:g})",
    )
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument(
        "--probe-max-length",
        type=positive_int,
        default=DEFAULT_PROBE_MAX_LENGTH,
        help=f"tokens per probe example (default {DEFAULT_PROBE_MAX_LENGTH})",
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=DEFAULT_MAX_LENGTH,
        help=f"tokens per training example (default {DEFAULT_MAX_LENGTH})",
    )
    parser.add_argument(
        "--train-examples",
        type=positive_int,
        default=DEFAULT_TRAIN_EXAMPLES,
        help="training examples",
    )
    parser.add_argument(
        "--eval-examples", type=positive_int, default=DEFAULT_EVAL_EXAMPLES, help="held-out examples"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=96, help="generation budget"
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_runtime(parser, auto_precision=True)
    add_distributed(
        parser,
        "the probes as `lisa diagnose --distributed` runs them, the LISA run as `lisa train "
        "--distributed` (ddp = DistributedDataParallel, fsdp2 = every block, E and H sharded); "
        "--batch-size is the global batch",
    )


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check everything the three stages need, before the first probe starts."""
    from lisa_apps.models import inspect_model
    from lisa_apps.pipeline import DiagnoseSettings
    from lisa_apps.training import FinetuneConfig, resolve_precision

    check_distributed(args, "demo")
    device = apply_runtime(args)
    precision = resolve_precision(args.precision, device)
    info = inspect_model(args.model)
    check_gamma(args.gamma, info.num_blocks, args.model)
    check_max_length(args.probe_max_length, info, "--probe-max-length")
    check_max_length(args.max_length, info)
    settings = DiagnoseSettings(
        steps=args.probe_steps,
        gamma=args.gamma,
        batch_size=args.batch_size,
        max_length=args.probe_max_length,
        kinds=("weight", "delta"),
        seed=args.seed,
        device=str(device),
        precision=precision,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
        distributed=args.distributed,
    )
    # The training settings are checked now too; the policy's sampler is filled in later.
    training = FinetuneConfig(
        method="lisa",
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        device=str(device),
        precision=precision,
        gradient_checkpointing=args.gradient_checkpointing,
        distributed=args.distributed,
    )
    train_examples = load_data(
        args.data, split="train", num_examples=args.train_examples, seed=args.seed
    )
    eval_examples = load_data(
        args.data, split="test", num_examples=args.eval_examples, seed=args.seed
    )
    notes = check_data_lengths(
        info, data=args.data, max_length=args.probe_max_length, train_examples=train_examples,
        flag="--probe-max-length",
    ) + check_data_lengths(
        info, data=args.data, max_length=args.max_length, train_examples=train_examples,
        eval_examples=eval_examples, max_new_tokens=args.max_new_tokens,
        no_generation_fix="",
    )  # fmt: skip
    # Under torchrun rank 0 alone checks and owns --out; the other ranks write nothing.
    main_rank, folder = claim_output(args, "lisa demo")

    def work() -> int:
        from lisa_apps.training.distributed import run_in_process_group

        if main_rank:
            for note in notes:
                print(f"note: {note}")

        def run() -> int:
            return _run(args, folder, settings, training, train_examples, eval_examples, main_rank)

        return run_in_process_group(run, device) if args.distributed else run()

    return work


def _run(args, folder, settings, training, train_examples, eval_examples, main_rank) -> int:
    from dataclasses import replace

    import pandas as pd

    from diagnostics.skew import side_by_side
    from lisa_apps.models import load_tokenizer
    from lisa_apps.pipeline import diagnose
    from lisa_apps.sharded_load import load_for_run
    from lisa_apps.training import finetune
    from lisa_apps.training.distributed import broadcast_from_rank_zero

    say = print if main_rank else lambda *_: None
    started = time.perf_counter()
    with folder if folder is not None else contextlib.nullcontext():
        say(f"[1/3] diagnose {args.model}: LoRA and FT probes, {args.probe_steps} steps each")
        tokenizer = load_tokenizer(args.model)
        diagnosis = diagnose(
            args.model, tokenizer, train_examples,
            folder.subfolder("diagnose") if folder is not None else None,
            replace(settings, progress=settings.progress and main_rank), model_name=args.model,
        )  # fmt: skip
        # The other ranks' diagnosis holds no policy: rank 0 derived and wrote it.
        policy = broadcast_from_rank_zero(diagnosis.policy)
        say(f"[2/3] policy (gamma {policy.gamma}) from the LoRA / FT weight-norm ratio")
        say(f"[3/3] LISA fine-tuning: {args.steps} steps, K={args.interval}, policy sampler")
        config = replace(
            training, lisa=policy.to_lisa_config(interval=args.interval, seed=args.seed)
        )
        # Under FSDP2 a safetensors folder loads shard by shard, as in `lisa train`.
        model, tokenizer = load_for_run(
            args.model, seed=args.seed, distributed=args.distributed, method="lisa"
        )
        result = finetune(
            model,
            tokenizer,
            train_examples,
            eval_examples,
            config,
            out_dir=folder.subfolder("train") if folder is not None else None,
            progress=not args.no_progress and main_rank,
        )
        if args.distributed:
            rank = os.environ.get("RANK", "0")
            print(
                f"rank {rank}: peak memory "
                + ", ".join(
                    f"{method} probe {peak / 2**20:,.0f} MiB"
                    for method, peak in diagnosis.peak_memory_bytes.items()
                )
                + f", LISA training {result.metrics['peak_memory_bytes'] / 2**20:,.0f} MiB"
            )
        if not main_rank:
            return 0
        before, after = result.metrics["before"], result.metrics["after"]
        report = {
            "model": args.model,
            "skew": side_by_side(diagnosis.summary).reset_index().to_dict(orient="records"),
            "policy": {
                "gamma": policy.gamma,
                "inclusion_probabilities": [float(p) for p in policy.inclusion_probabilities],
            },
            "lisa": result.metrics["settings"],
            "before": before,
            "after": after,
            "peak_memory_bytes": {
                **{f"{m}_probe": b for m, b in diagnosis.peak_memory_bytes.items()},
                "lisa_training": result.metrics["peak_memory_bytes"],
            },
            "seconds": {
                "diagnose": round(diagnosis.seconds["total"], 1),
                "train": result.metrics["train_runtime_s"],
                "total": round(time.perf_counter() - started, 1),
            },
        }
        if args.distributed:
            report["world_size"] = result.metrics["world_size"]
            report["distributed"] = args.distributed
        folder.write_json("report.json", report)

    print("\n== skew (per-layer mean norms, LoRA vs FT) ==")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(side_by_side(diagnosis.summary).to_string())
    probabilities = policy.inclusion_probabilities
    print(
        f"\n== policy == gamma {policy.gamma} of {probabilities.size} blocks; inclusion "
        f"probability min {probabilities.min():.3f}, max {probabilities.max():.3f} "
        f"(uniform {policy.gamma / probabilities.size:.3f})"
    )
    print("\n== held-out (before -> after LISA) ==")
    print(f"loss      {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}")
    if before.get("accuracy") is not None:
        print(
            f"accuracy  {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
            f"({after['num_scored']} problems, exact match of the final number)"
        )
    print(
        f"\nwrote {', '.join(f'{args.out}/{name}' for name in folder.written)} "
        f"in {report['seconds']['total']:.0f} s"
    )
    return 0

