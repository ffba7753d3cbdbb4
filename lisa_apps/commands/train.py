"""`lisa train`: fine-tune with LISA, LoRA or full FT on one budget and report before/after scores."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable

from lisa_apps.commands.arguments import (
    add_data_options,
    add_distributed,
    add_output,
    add_runtime,
    apply_runtime,
    check_distributed,
    check_gamma,
    check_policy_path,
    claim_output,
    csv_choices,
    load_data,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from lisa_apps.commands.checks import (
    check_data_lengths,
    check_lora_rank,
    check_max_length,
    refuse_flags_of_other_methods,
)

DEFAULT_STEPS = 60
COMMAND = "lisa train"
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_LENGTH = 256
DEFAULT_EVAL_EXAMPLES = 32
DEFAULT_TRAIN_EXAMPLES = 1000


def gamma_type(text: str) -> int:
    """--gamma: at least one block (0 would train only the embedding and head)."""
    value = nonnegative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            "must be >= 1: gamma 0 trains no block at all, only the embedding and head (for "
            "that ablation use the library: LisaConfig(gamma=0))"
        )
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa train`."""
    from lisa.config import STATE_POLICIES
    from lisa.defaults import (
        DEFAULT_GAMMA,
        DEFAULT_INTERVAL,
        DEFAULT_LEARNING_RATES,
        DEFAULT_LORA_RANK,
        DEFAULT_LR_SCHEDULER,
        DEFAULT_WARMUP_RATIO,
    )
    from lisa_apps.models import DEFAULT_MODEL
    from lisa_apps.training import METHODS
    from lisa_apps.training.config import DEFAULT_STEPS, REPORT_TARGETS

    rates = ", ".join(f"{method} {rate:g}" for method, rate in DEFAULT_LEARNING_RATES.items())
    from lisa_apps.presets import add_preset_option

    # Before add_output adds --config: defaults < preset < recipe < flags.
    add_preset_option(parser)
    parser.add_argument(
        "--method", choices=METHODS, default="lisa", help="what trains (default lisa)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="smollm2-135m, tiny-llama, tiny-gpt2, tiny-qwen2 or a local folder (default: the "
        f"model --policy was derived on, else {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--data",
        default="math",
        help="'math' (generated word problems), or a .json/.jsonl/.parquet/.csv file, saved "
        "dataset folder or hub name in alpaca, messages, sharegpt or text format (10%% held out "
        "by content hash; see docs/data.md)",
    )
    add_data_options(parser, tokenization=True)
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        action=_Given,
        help=f"optimizer steps (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--epochs",
        type=positive_float,
        default=None,
        help="passes over the training examples, instead of --steps (may be fractional)",
    )
    add_output(parser, None, "metrics, history, plot and the trained model")
    lisa = parser.add_argument_group("LISA")
    lisa.add_argument(
        "--policy", default=None, help="policy.json from `lisa diagnose` (weighted sampler)"
    )
    lisa.add_argument(
        "--gamma",
        type=gamma_type,
        default=None,
        help=f"blocks per period (default {DEFAULT_GAMMA}, or the policy's)",
    )
    lisa.add_argument(
        "--interval",
        type=positive_int,
        default=None,  # None: not given (a LoRA or FT run refuses it); then DEFAULT_INTERVAL
        help=f"steps per period K (default {DEFAULT_INTERVAL})",
    )
    lisa.add_argument(
        "--sampler", default="uniform", help="registered sampler name (default uniform)"
    )
    lisa.add_argument(
        "--state-policy",
        choices=STATE_POLICIES,
        default=None,  # None: not given; then "drop"
        help="optimizer state of blocks that leave the active set (default drop)",
    )
    lisa.add_argument(
        "--freeze-embeddings", action="store_true", help="do not train the embedding (E)"
    )
    lisa.add_argument("--freeze-head", action="store_true", help="do not train the head (H)")
    training = parser.add_argument_group("training")
    training.add_argument(
        "--lr", type=positive_float, default=None, help=f"learning rate (defaults: {rates})"
    )
    training.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    training.add_argument(
        "--max-length", type=positive_int, default=DEFAULT_MAX_LENGTH, help="tokens per example"
    )
    training.add_argument(
        "--lora-rank",
        type=positive_int,
        default=None,  # None: not given (a LISA or FT run refuses it); then DEFAULT_LORA_RANK
        help=f"LoRA rank, alpha = 2 * rank (default {DEFAULT_LORA_RANK})",
    )
    training.add_argument(
        "--train-examples",
        type=positive_int,
        default=None,
        help=f"training examples (default {DEFAULT_TRAIN_EXAMPLES} generated, or the whole file)",
    )
    training.add_argument(
        "--eval-examples",
        type=positive_int,
        default=DEFAULT_EVAL_EXAMPLES,
        help=f"held-out examples scored (default {DEFAULT_EVAL_EXAMPLES})",
    )
    training.add_argument(
        "--max-new-tokens", type=positive_int, default=96, help="generation budget per answer"
    )
    training.add_argument("--seed", type=nonnegative_int, default=0)
    training.add_argument(
        "--no-accuracy",
        action="store_true",
        help="held-out loss only: skip generation and accuracy",
    )
    training.add_argument(
        "--skip-before", action="store_true", help="do not score the model before training"
    )
    training.add_argument(
        "--no-save-model",
        action="store_true",
        help="do not save the trained model (LoRA: adapters) in --out/model",
    )
    training.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    training.add_argument(
        "--merge",
        action="store_true",
        help="LoRA: save the model with the adapters merged in (a plain model), not the adapters",
    )
    schedule = parser.add_argument_group("schedule (each as transformers.Trainer means it)")
    schedule.add_argument(
        "--lr-scheduler",
        default=None,
        help="a transformers scheduler: linear, cosine, constant_with_warmup, constant, ... "
        f"(default {DEFAULT_LR_SCHEDULER})",
    )
    schedule.add_argument(
        "--warmup-steps", type=nonnegative_int, default=0, help="linear warm-up steps"
    )
    schedule.add_argument(
        "--warmup-ratio",
        type=nonnegative_float,
        default=None,
        help="warm-up as a fraction of the steps, in [0, 1) (instead of --warmup-steps; default "
        f"{DEFAULT_WARMUP_RATIO:g}, none with --warmup-steps or --lr-scheduler constant)",
    )
    schedule.add_argument(
        "--grad-accum",
        type=positive_int,
        default=1,
        help="micro-batches of --batch-size per optimizer step (default 1)",
    )
    schedule.add_argument(
        "--weight-decay",
        type=nonnegative_float,
        default=0.0,
        help="AdamW weight decay, not on biases and norms (default 0)",
    )
    groups = parser.add_argument_group(
        "a rate per layer group (LISA and FT; default: --lr and --weight-decay; a tied "
        "embedding and head share the embedding's)"
    )
    for group, what in (("embed", "embedding (E)"), ("head", "head (H)"),
                        ("extras", "extras (final norm, ...)")):  # fmt: skip
        groups.add_argument(
            f"--lr-{group}", type=positive_float, default=None, help=f"learning rate of the {what}"
        )
        groups.add_argument(
            f"--weight-decay-{group}",
            type=nonnegative_float,
            default=None,
            help=f"weight decay of the {what}",
        )
    schedule.add_argument(
        "--max-grad-norm",
        type=nonnegative_float,
        default=1.0,
        help="clip the gradient norm to this; 0 clips nothing (default 1.0)",
    )
    saving = parser.add_argument_group("checkpoints and tracking")
    saving.add_argument(
        "--save-steps",
        type=positive_int,
        default=None,
        help="write --out/checkpoint-N every N steps (one process and ddp)",
    )
    saving.add_argument(
        "--save-total-limit",
        type=positive_int,
        default=None,
        help="keep only the newest N checkpoints (default all)",
    )
    saving.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="continue the run in --out from its newest checkpoint (auto) or from PATH, a "
        "checkpoint-N folder",
    )
    saving.add_argument(
        "--report-to",
        type=csv_choices(("none", *REPORT_TARGETS)),
        default=("none",),
        help="tensorboard (event files in --out/tensorboard), wandb, or none (default)",
    )
    add_runtime(parser, auto_precision=True)
    add_distributed(
        parser,
        "ddp = transformers.Trainer with DistributedDataParallel, fsdp2 = a plain loop with "
        "every block, E and H sharded by FSDP2; --batch-size is the global batch",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="--distributed fsdp2: keep parameters, grads and optimizer state in CPU memory "
        "(FSDP2's CPUOffloadPolicy); the GPU holds activations and one gathered unit",
    )


def _lisa_config(args, info, policy):
    """The LisaConfig the flags ask for, checked against the model's blocks."""
    from lisa.config import LisaConfig
    from lisa.defaults import DEFAULT_GAMMA
    from lisa.engine import build_sampler

    frozen = {"train_embeddings": not args.freeze_embeddings, "train_head": not args.freeze_head}
    if policy is not None:
        if args.gamma is not None and args.gamma != policy.gamma:
            raise ValueError(
                f"--gamma {args.gamma} disagrees with the policy's gamma {policy.gamma}; drop "
                "--gamma or derive a policy with that gamma"
            )
        if args.sampler != "uniform":
            raise ValueError("--sampler and --policy both choose the sampler; pass one of them")
        config = policy.to_lisa_config(
            interval=args.interval, seed=args.seed, state_policy=args.state_policy
        )
        if args.freeze_embeddings or args.freeze_head:
            from dataclasses import replace

            config = replace(
                config,
                train_embeddings=config.train_embeddings and frozen["train_embeddings"],
                train_head=config.train_head and frozen["train_head"],
            )
        return config
    gamma = DEFAULT_GAMMA if args.gamma is None else args.gamma
    check_gamma(gamma, info.num_blocks, info.name)
    try:
        config = LisaConfig(
            gamma=gamma,
            interval=args.interval,
            sampler=args.sampler,
            seed=args.seed,
            state_policy=args.state_policy,
            **frozen,
        )
        build_sampler(config, info.num_blocks)  # the sampler the run will build
    except ValueError as error:
        raise ValueError(f"--sampler {args.sampler}: {error}") from None
    return config


def _refuse_flags_of_other_methods(args: argparse.Namespace) -> None:
    """Refuse a flag of another method (it would be ignored), then fill in the defaults."""
    from lisa.defaults import DEFAULT_INTERVAL, DEFAULT_LORA_RANK

    lisa_flags = [
        flag
        for flag, given in (
            ("--policy", args.policy is not None),
            ("--gamma", args.gamma is not None),
            ("--interval", args.interval is not None),
            ("--sampler", args.sampler != "uniform"),
            ("--state-policy", args.state_policy is not None),
            ("--freeze-embeddings", args.freeze_embeddings),
            ("--freeze-head", args.freeze_head),
        )
        if given
    ]
    lora_flags = ["--lora-rank"] if args.lora_rank is not None else []
    refuse_flags_of_other_methods(args.method, {"lisa": lisa_flags, "lora": lora_flags})
    args.interval = DEFAULT_INTERVAL if args.interval is None else args.interval
    args.state_policy = "drop" if args.state_policy is None else args.state_policy
    args.lora_rank = DEFAULT_LORA_RANK if args.lora_rank is None else args.lora_rank


class _Given(argparse.Action):
    """Store the value and note that it was given (a default --steps yields to --epochs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"_given_{self.dest}", True)


def _check_schedule(args: argparse.Namespace) -> None:
    """The length, warm-up, checkpoint and tracking flags, with the flag names in errors."""
    if args.epochs is not None:
        if getattr(args, "_given_steps", False):
            raise ValueError(
                f"--steps {args.steps} and --epochs {args.epochs:g} both set the length of the "
                "run; pass one of them"
            )
        args.steps = None
    if args.warmup_steps and args.warmup_ratio:
        raise ValueError(
            "--warmup-steps and --warmup-ratio both set the warm-up; pass one of them"
        )
    if args.warmup_ratio is not None and args.warmup_ratio >= 1:
        raise ValueError(
            f"--warmup-ratio {args.warmup_ratio:g} is a fraction of the steps; use a number in "
            "[0, 1), or --warmup-steps"
        )
    if "none" in args.report_to and len(args.report_to) > 1:
        raise ValueError("--report-to none cannot be combined with other targets; pass one")
    args.report_to = tuple(t for t in args.report_to if t != "none")
    if "tensorboard" in args.report_to:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ModuleNotFoundError(
                "--report-to tensorboard needs the tensorboard package: pip install "
                "'lisa-finetune[track]'"
            )
    if "wandb" in args.report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ModuleNotFoundError(
                "--report-to wandb needs the wandb package: pip install 'lisa-finetune[track]'"
            )
    if args.save_total_limit is not None and args.save_steps is None:
        raise ValueError("--save-total-limit applies with --save-steps N; pass both or neither")
    if args.merge and args.method != "lora":
        raise ValueError(f"--merge applies to --method lora only, not {args.method}")
    if args.merge and args.no_save_model:
        raise ValueError("--merge saves the model; drop --merge or --no-save-model")
    if args.offload and args.distributed != "fsdp2":
        raise ValueError(
            "--offload applies to --distributed fsdp2 only (FSDP2's CPU offload); add "
            "--distributed fsdp2 under torchrun, or drop --offload"
        )
    if args.resume is not None and args.overwrite:
        raise ValueError(
            "--resume continues the run in --out and --overwrite replaces it; pass one of them"
        )


def _finetune_config(**fields):
    """FinetuneConfig(...), its errors naming the flag (steps=... -> --steps ...)."""
    import re

    from lisa_apps.training import FinetuneConfig

    try:
        return FinetuneConfig(**fields)
    except ValueError as error:
        message = re.sub(
            r"^(\w+)=", lambda m: "--" + m.group(1).replace("_", "-") + " ", str(error)
        )
        raise ValueError(message) from None


def _claim_for_resume(args: argparse.Namespace, model_name: str):
    """(is rank 0, folder) of a resumed run: the earlier run's folder, continued in place."""
    from pathlib import Path

    from lisa_apps.training.checkpoints import ResumedRunFolder, resolve_resume
    from lisa_apps.training.dcp import check_checkpoint_kind

    checkpoint = resolve_resume(
        args.resume, args.out, command=COMMAND, model=model_name, method=args.method
    )
    args.resume = str(checkpoint)
    check_checkpoint_kind(
        checkpoint, distributed=args.distributed, world=int(os.environ.get("WORLD_SIZE", "1"))
    )
    if Path(args.out).resolve() != checkpoint.parent.resolve():
        return claim_output(args, COMMAND)  # a new folder continues the run from PATH
    main_rank = args.distributed is None or os.environ.get("RANK") == "0"
    if not main_rank:
        return False, None
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    return True, ResumedRunFolder(args.out, command=COMMAND, arguments=arguments).check()


def _check_group_rates(args: argparse.Namespace, info) -> dict[str, float]:
    """The per-group rate and decay flags given, refused where they could not apply."""
    given = {
        f"{kind}_{group}": getattr(args, f"{kind}_{group}")
        for kind in ("lr", "weight_decay")
        for group in ("embed", "head", "extras")
        if getattr(args, f"{kind}_{group}") is not None
    }
    flags = [f"--{name.replace('_', '-')}" for name in given]
    if given and args.method == "lora":
        raise ValueError(
            f"{flags[0]}: LoRA trains no embedding, head or extras; drop it or use --method "
            "lisa or ft"
        )
    frozen = {"embed": args.freeze_embeddings, "head": args.freeze_head}
    for name, flag in zip(given, flags, strict=True):
        group = name.rsplit("_", 1)[1]
        if frozen.get(group):
            switch = "--freeze-embeddings" if group == "embed" else "--freeze-head"
            raise ValueError(f"{flag} sets a rate for what {switch} freezes; pass one of them")
    tied = bool(getattr(info.config, "tie_word_embeddings", False))
    for kind in ("lr", "weight_decay"):
        head, embed = given.get(f"{kind}_head"), given.get(f"{kind}_embed")
        if tied and head is not None and head != embed:
            flag = kind.replace("_", "-")
            raise ValueError(
                f"--{flag}-head {head:g}: {info.name} ties its embedding and head (one weight, "
                f"trained as the embedding); set it with --{flag}-embed"
            )
    return given


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check every input without loading weights; return the training run."""
    from diagnostics.policy import SamplingPolicy
    from lisa.signature import layer_signature, signature_difference
    from lisa_apps.models import DEFAULT_MODEL, inspect_model
    from lisa_apps.training import resolve_precision

    check_distributed(args, "train")
    device = apply_runtime(args)
    _check_schedule(args)
    # The options as given (defaults filled in later stay out), for the run's recipe.yaml.
    recorded = argparse.Namespace(**vars(args))
    if args.preset is not None and args.method != "lisa":
        raise ValueError(
            f"--preset {args.preset} sets LISA's settings; use --method lisa or drop --preset"
        )
    _refuse_flags_of_other_methods(args)
    policy = None
    if args.policy is not None:
        policy = SamplingPolicy.from_json(check_policy_path(args.policy))
    model_name = args.model or (policy.provenance.get("model") if policy else None) or DEFAULT_MODEL
    args.model = model_name
    recorded.model = model_name
    info = inspect_model(model_name)
    check_max_length(args.max_length, info)
    if args.method == "lora":
        check_lora_rank(args.lora_rank, info)
    if policy is not None:
        if policy.num_blocks != info.num_blocks:
            raise ValueError(
                f"--policy {args.policy} is for {policy.num_blocks} blocks but {model_name} has "
                f"{info.num_blocks}; derive a policy on this model with lisa diagnose --model "
                f"{model_name}"
            )
        if policy.signature is not None:
            difference = signature_difference(
                layer_signature(policy.signature), info.layer_signature
            )
            if difference is not None:
                raise ValueError(
                    f"--policy {args.policy} was derived on another model than {model_name} "
                    f"({difference}); derive one on this model with lisa diagnose"
                )
    from lisa_apps.presets import check_preset_policy

    check_preset_policy(args.preset, policy)
    group_rates = _check_group_rates(args, info)
    lisa_config = _lisa_config(args, info, policy) if args.method == "lisa" else None
    config = _finetune_config(
        method=args.method,
        steps=args.steps,
        epochs=args.epochs,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio,
        grad_accum=args.grad_accum,
        weight_decay=args.weight_decay,
        **group_rates,
        max_grad_norm=args.max_grad_norm,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        report_to=args.report_to,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        packing=args.packing,
        drop_long=args.drop_long,
        seed=args.seed,
        lora_rank=args.lora_rank,
        lisa=lisa_config,
        max_new_tokens=args.max_new_tokens,
        score_accuracy=not args.no_accuracy,
        device=str(device),
        precision=resolve_precision(args.precision, device),
        gradient_checkpointing=args.gradient_checkpointing,
        distributed=args.distributed,
        offload=args.offload,
    )
    train_count = args.train_examples
    if train_count is None and args.data == "math":
        train_count = DEFAULT_TRAIN_EXAMPLES
    train_examples = load_data(
        args.data, split="train", num_examples=train_count, seed=args.seed, args=args
    )
    eval_examples = load_data(
        args.data, split="test", num_examples=args.eval_examples, seed=args.seed, args=args
    )
    notes = check_data_lengths(
        info, data=args.data, max_length=args.max_length, train_examples=train_examples,
        eval_examples=eval_examples,
        max_new_tokens=None if args.no_accuracy else args.max_new_tokens,
        drop_long=args.drop_long,
    )  # fmt: skip
    if args.resume is not None:
        main_rank, folder = _claim_for_resume(args, model_name)
    else:
        main_rank, folder = claim_output(args, COMMAND)

    def work() -> int:
        from lisa_apps.recipes import RECIPE_FILE, resolved_recipe
        from lisa_apps.sharded_load import load_for_run
        from lisa_apps.training import finetune
        from lisa_apps.training.distributed import run_in_process_group

        started = time.perf_counter()
        if main_rank:
            print(
                f"lisa train: {args.method} on {model_name}, {len(train_examples)} train / "
                f"{len(eval_examples)} held-out examples from {args.data!r}, "
                f"{config.training_steps(len(train_examples))} steps, lr "
                f"{config.resolved_learning_rate:g} ({config.lr_scheduler}), batch "
                f"{args.batch_size}{f' x {args.grad_accum}' if args.grad_accum > 1 else ''}, "
                f"{config.device} ({config.precision})"
                + (f", {args.distributed}" if args.distributed else "")
            )
            for note in notes:
                print(f"note: {note}")

        def train() -> dict:
            with folder if folder is not None else contextlib.nullcontext():
                if folder is not None:
                    folder.write_text(RECIPE_FILE, resolved_recipe(recorded))
                # Under FSDP2 a safetensors folder loads shard by shard (sharded_load).
                model, tokenizer = load_for_run(
                    model_name, seed=args.seed, distributed=args.distributed, method=args.method
                )
                return finetune(
                    model,
                    tokenizer,
                    train_examples,
                    eval_examples,
                    config,
                    out_dir=folder,
                    save_model=not args.no_save_model,
                    progress=not args.no_progress and main_rank,
                    evaluate_before=not args.skip_before,
                    resume_from=args.resume,
                    checkpoint_dir=args.out,
                    merge_lora=args.merge,
                ).metrics

        metrics = run_in_process_group(train, device) if args.distributed else train()
        if args.distributed:
            print(format_rank_memory(metrics))
        if main_rank:
            print(format_summary(metrics))
            print(
                f"wrote {', '.join(folder.written)} to {args.out} in "
                f"{time.perf_counter() - started:.0f} s"
            )
        return 0

    return work


def format_rank_memory(metrics: dict) -> str:
    """One line per rank: what this rank held (under FSDP2, its shards)."""
    rank = int(os.environ.get("RANK", "0"))
    return (
        f"rank {rank}: peak memory {metrics['peak_memory_bytes'] / 2**20:,.0f} MiB "
        f"({metrics['peak_memory_measure']}), optimizer state "
        f"{metrics['optimizer_state_bytes'] / 2**20:,.1f} MiB"
    )


def format_summary(metrics: dict) -> str:
    """A small before/after table of held-out loss and accuracy, plus timing and memory."""

    def cell(stage: str, key: str, pattern: str) -> str:
        value = metrics.get(stage, {}).get(key)
        return "-" if value is None else format(value, pattern)

    lines = [
        f"{'':8}{'held-out loss':>15}{'accuracy':>10}",
        *(
            f"{stage:8}{cell(stage, 'eval_loss', '.4f'):>15}{cell(stage, 'accuracy', '.3f'):>10}"
            for stage in ("before", "after")
        ),
        f"training loss {metrics['train_loss_first']:.4f} -> {metrics['train_loss_last']:.4f}; "
        f"{metrics['seconds_per_step']:.2f} s/step; {metrics['trainable_parameters']:,} "
        "trainable parameters",
        f"optimizer state {metrics['optimizer_state_bytes'] / 2**20:,.1f} MiB; peak memory "
        f"{metrics['peak_memory_bytes'] / 2**20:,.0f} MiB ({metrics['peak_memory_measure']})",
    ]
    if metrics.get("method") == "lisa":
        lines.append(f"LISA: {metrics['num_switches']} draws over {metrics['num_blocks']} blocks")
    if "peak_memory_bytes_per_rank" in metrics:
        per_rank = ", ".join(f"{b / 2**20:,.0f}" for b in metrics["peak_memory_bytes_per_rank"])
        lines.append(f"{metrics['world_size']} ranks: peak memory per rank {per_rank} MiB")
    return "\n".join(lines)
