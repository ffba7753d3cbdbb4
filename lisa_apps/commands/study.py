"""`lisa study`: methods and LISA variants x seeds x a learning-rate sweep, with intervals.

Writes into --out: runs.csv (one row per finished run), summary.csv (per variant at its chosen
rate: mean, standard deviation and 95% t interval over seeds, paired difference to uniform
LISA), loss.png, policies/ (the policy of each score source) and runs/RUN_ID/ (each run's
files); with --eval-every N also curves.csv (test loss every N steps of each run),
summary_curves.csv (the same statistics per step), summary_time.csv (at equal wall time) and
curves.png. The same command run again resumes: finished runs are not trained again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
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
    check_split_sizes,
    only_for,
)


def _csv_of(kind: Callable[[str], object], what: str) -> Callable[[str], tuple]:
    """A comma list of values of one argument type (no empty list, no repeats)."""

    def parse(text: str) -> tuple:
        items = [part.strip() for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"give a comma list of {what}")
        values = tuple(kind(item) for item in items)
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
        return values

    return parse


def _method_rates(text: str) -> dict[str, float]:
    """``lisa=4e-4,lora=1e-3``: a base rate per method."""
    from lisa_apps.training import METHODS

    rates: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        method, sep, value = part.partition("=")
        method = method.strip()
        if not sep or method not in METHODS:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not METHOD=RATE with METHOD one of {', '.join(METHODS)} "
                "(e.g. lisa=4e-4,lora=1e-3)"
            )
        if method in rates:
            raise argparse.ArgumentTypeError(f"{text!r} gives {method} twice; give it once")
        rates[method] = positive_float(value.strip())
    return rates


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa study`."""
    from diagnostics.norms import NORM_KINDS, REDUCTIONS
    from lisa.config import STATE_POLICIES
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_INTERVAL, DEFAULT_LORA_RANK
    from lisa_apps.models import DEFAULT_MODEL
    from lisa_apps.presets import available_presets
    from lisa_apps.study.settings import EH_CHOICES, POLICY_NAMES, StudySettings
    from lisa_apps.training import METHODS

    defaults = StudySettings()
    # argparse (before Python 3.13) takes "-1,1" for an unknown option, so `--lr-factors -1,1`
    # failed with "expected one argument"; a comma list of numbers is a value, and its type
    # then refuses the negative factor by name.
    parser._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"smollm2-135m, tiny-llama, ... or a local folder (default {DEFAULT_MODEL})",
    )  # fmt: skip
    parser.add_argument(
        "--data",
        default="math",
        help="'math' (generated) or a data set file, folder or hub name (see docs/data.md)",
    )
    add_data_options(parser)
    parser.add_argument(
        "--methods", type=csv_choices(METHODS), default=METHODS,
        help=f"comma list of {', '.join(METHODS)} (default all)",
    )  # fmt: skip
    parser.add_argument(
        "--policies", type=csv_choices(POLICY_NAMES), default=None,
        help=f"LISA policies, comma list of {', '.join(POLICY_NAMES)} (default uniform); "
        "each source's policy is derived once, on training batches",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=positive_int, default=defaults.seeds,
        help=f"seeds 0..N-1 (default {defaults.seeds})",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=positive_int, default=defaults.steps,
        help=f"optimizer steps of every run (default {defaults.steps})",
    )  # fmt: skip
    add_output(
        parser, None,
        "runs.csv, summary.csv, loss.png, policies and one folder per run (the same command "
        "again resumes the study there)",
    )  # fmt: skip
    sweep = parser.add_argument_group("learning rates (chosen on a validation split of the training data)")
    sweep.add_argument(
        "--lr-factors", type=_csv_of(positive_float, "numbers > 0"), default=defaults.lr_factors,
        help="each variant's sweep: its method's base rate (--lr-base, else its default) times each factor (default "
        f"{','.join(f'{f:g}' for f in defaults.lr_factors)})",
    )  # fmt: skip
    sweep.add_argument(
        "--lr-base", type=_method_rates, default=None, metavar="METHOD=RATE,...",
        help="the base rate of a method's sweep, e.g. lisa=4e-4,lora=1e-3 (default: each "
        "method's default rate, as lisa train's); resumes a study begun under other defaults",
    )  # fmt: skip
    sweep.add_argument(
        "--tune-seeds", type=positive_int, default=None,
        help="choose the rate on the first N seeds; later seeds run the chosen rate only "
        "(default: every seed runs every rate)",
    )  # fmt: skip
    lisa = parser.add_argument_group(
        "LISA knobs (the first value is the base; each further value adds a uniform-LISA variant)"
    )
    lisa.add_argument(
        "--gammas", type=_csv_of(positive_int, "integers >= 1"), default=None,
        help=f"blocks per period (default {DEFAULT_GAMMA})",
    )  # fmt: skip
    lisa.add_argument(
        "--intervals", type=_csv_of(positive_int, "integers >= 1"), default=None,
        help=f"steps per period K (default {DEFAULT_INTERVAL})",
    )  # fmt: skip
    lisa.add_argument(
        "--state-policies", type=csv_choices(STATE_POLICIES), default=None,
        help=f"optimizer state of blocks that leave, among {', '.join(STATE_POLICIES)} "
        "(default drop)",
    )  # fmt: skip
    lisa.add_argument(
        "--presets", type=csv_choices(available_presets()), default=None,
        help=f"add `lisa train` presets as LISA variants, comma list of "
        f"{', '.join(available_presets())} (docs/presets.md); a preset's rate is the centre of "
        "its sweep",
    )  # fmt: skip
    lisa.add_argument(
        "--eh", type=csv_choices(EH_CHOICES), default=None,
        help="embedding and head trained every period or frozen (default trained)",
    )  # fmt: skip
    lisa.add_argument(
        "--eh-lr-factors", type=_csv_of(positive_float, "numbers > 0"), default=None,
        help="embedding and head train at the run's rate times this factor, the blocks at the "
        "rate (default 1; 1,0.25 adds lisa-uniform-ehlr0.25; a tied E/H weight takes it)",
    )  # fmt: skip
    schedule = parser.add_argument_group("schedule of every run (as `lisa train`'s) and curves")
    schedule.add_argument(
        "--lr-scheduler", default=defaults.lr_scheduler,
        help="a transformers scheduler: linear, cosine, constant_with_warmup, ... (default "
        f"{defaults.lr_scheduler})",
    )  # fmt: skip
    schedule.add_argument(
        "--warmup-steps", type=nonnegative_int, default=0, help="linear warm-up steps"
    )
    schedule.add_argument(
        "--warmup-ratio", type=nonnegative_float, default=0.0,
        help="warm-up as a fraction of the steps, in [0, 1) (instead of --warmup-steps)",
    )  # fmt: skip
    schedule.add_argument(
        "--eval-every", type=positive_int, default=None,
        help="also score each run's test loss every N steps: curves.csv, summary_curves.csv, "
        "summary_time.csv, curves.png (default: at the end only)",
    )  # fmt: skip
    training = parser.add_argument_group("training and scoring")
    training.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    training.add_argument(
        "--max-length", type=positive_int, default=defaults.max_length, help="tokens per example"
    )
    training.add_argument(
        "--lora-rank", type=positive_int, default=None,  # None: not given; then the default
        help=f"LoRA rank, alpha = 2 * rank (default {DEFAULT_LORA_RANK})",
    )  # fmt: skip
    for flag, what in (("--train-examples", "training examples"),
                       ("--val-examples", "validation examples carved from the training data"),
                       ("--test-examples", "held-out test examples (loss)")):  # fmt: skip
        name = flag[2:].replace("-", "_")
        training.add_argument(
            flag, type=positive_int, default=getattr(defaults, name),
            help=f"{what} (default {getattr(defaults, name)})",
        )  # fmt: skip
    training.add_argument(
        "--accuracy-examples", type=nonnegative_int, default=None,
        help="test problems whose greedy answer is scored (default: every test example; 0: "
        "loss only)",
    )  # fmt: skip
    training.add_argument(
        "--max-new-tokens", type=positive_int, default=defaults.max_new_tokens,
        help="generation budget per answer",
    )  # fmt: skip
    sources = parser.add_argument_group("score sources")
    sources.add_argument(
        "--score-batches", type=positive_int, default=defaults.score_batches,
        help=f"training batches the grad-norm and outlier sources read (default "
        f"{defaults.score_batches})",
    )  # fmt: skip
    sources.add_argument(
        "--outlier-threshold", type=positive_float, default=defaults.outlier_threshold,
        help=f"M of the outlier source (default {defaults.outlier_threshold:g})",
    )  # fmt: skip
    sources.add_argument(
        "--probe-steps", type=positive_int, default=defaults.probe_steps,
        help=f"steps of each norm-ratio probe (default {defaults.probe_steps})",
    )  # fmt: skip
    sources.add_argument("--norm-kind", choices=NORM_KINDS, default=defaults.norm_kind,
                         help=f"norm-ratio: norm kind (default {defaults.norm_kind})")  # fmt: skip
    sources.add_argument("--norm-reduce", choices=REDUCTIONS, default=defaults.norm_reduce,
                         help=f"norm-ratio: reduction (default {defaults.norm_reduce})")  # fmt: skip
    add_runtime(parser, auto_precision=True)
    add_distributed(
        parser,
        "every run of the grid as `lisa train --distributed` trains (ddp = "
        "DistributedDataParallel, fsdp2 = every block, E and H sharded); --batch-size is the "
        "global batch",
    )


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Check every input without loading weights; return the study."""
    from lisa.defaults import DEFAULT_GAMMA, DEFAULT_INTERVAL, DEFAULT_LORA_RANK
    from lisa_apps.models import inspect_model
    from lisa_apps.study import StudyFolder, StudySettings

    check_distributed(args, "study")
    device = apply_runtime(args)
    # The LISA knobs default to None, so a knob given without lisa in --methods is refused
    # rather than ignored; then the defaults are filled in.
    lisa_knobs = (
        ("--policies", "policies", ("uniform",)), ("--gammas", "gammas", (DEFAULT_GAMMA,)),
        ("--intervals", "intervals", (DEFAULT_INTERVAL,)),
        ("--state-policies", "state_policies", ("drop",)), ("--eh", "eh", ("trained",)),
        ("--eh-lr-factors", "eh_lr_factors", (1.0,)), ("--presets", "presets", ()),
    )  # fmt: skip
    given = [flag for flag, name, _ in lisa_knobs if getattr(args, name) is not None]
    if "lisa" not in args.methods and given:
        raise ValueError(only_for(given, "LISA runs", "add lisa to --methods"))
    for _, name, default in lisa_knobs:
        if getattr(args, name) is None:
            setattr(args, name, default)
    for method in args.lr_base or {}:
        if method not in args.methods:
            raise ValueError(
                f"--lr-base gives a rate for {method}, which --methods does not run; drop "
                f"{method} from --lr-base or add it to --methods"
            )
    if "lora" not in args.methods and args.lora_rank is not None:
        raise ValueError(only_for(["--lora-rank"], "LoRA runs", "add lora to --methods"))
    args.lora_rank = DEFAULT_LORA_RANK if args.lora_rank is None else args.lora_rank
    if args.tune_seeds is not None and args.tune_seeds > args.seeds:
        raise ValueError(
            f"--tune-seeds {args.tune_seeds} is more than --seeds {args.seeds}; use 1..{args.seeds}"
        )
    accuracy_examples = args.test_examples if args.accuracy_examples is None else args.accuracy_examples
    if accuracy_examples > args.test_examples:
        raise ValueError(
            f"--accuracy-examples {accuracy_examples} is more than --test-examples "
            f"{args.test_examples}; score at most the test examples"
        )
    if args.eh[0] == "frozen" and args.eh_lr_factors != (1.0,):
        raise ValueError(
            "--eh-lr-factors sets the rate of the embedding and head, which --eh's first value "
            "frozen freezes in the base variant; put trained first in --eh"
        )
    if args.warmup_steps and args.warmup_ratio:
        raise ValueError("--warmup-steps and --warmup-ratio both set the warm-up; pass one of them")
    if args.warmup_ratio >= 1:
        raise ValueError(
            f"--warmup-ratio {args.warmup_ratio:g} is a fraction of the steps; use a number in "
            "[0, 1), or --warmup-steps"
        )
    if args.eval_every is not None and args.eval_every > args.steps:
        raise ValueError(
            f"--eval-every {args.eval_every} is more than --steps {args.steps}: no point would be "
            f"scored; use 1..{args.steps}"
        )
    from lisa_apps.training.config import FinetuneConfig

    try:
        FinetuneConfig(lr_scheduler=args.lr_scheduler, warmup_steps=args.warmup_steps,
                       warmup_ratio=args.warmup_ratio)  # fmt: skip
    except ValueError as error:  # the config's message, under the flags' names
        raise ValueError(
            str(error).replace("lr_scheduler=", "--lr-scheduler ").replace("warmup_", "--warmup-")
        ) from None
    info = inspect_model(args.model)
    for gamma in args.gammas:
        check_gamma(gamma, info.num_blocks, args.model, "--gammas")
    from lisa_apps.study.settings import preset_variant

    for name in args.presets:
        if preset_variant(name).gamma > info.num_blocks:
            raise ValueError(
                f"--presets {name}: its gamma {preset_variant(name).gamma} is more than the "
                f"{info.num_blocks} blocks of {args.model}; drop {name} or use a larger model"
            )
    if "lora" in args.methods:
        check_lora_rank(args.lora_rank, info)
    test = load_data(args.data, split="test", num_examples=args.test_examples, seed=0, args=args)
    pool = args.train_examples + args.val_examples if args.data == "math" else None
    train = load_data(args.data, split="train", num_examples=pool, seed=0, args=args)
    check_split_sizes(
        args.data, train_records=len(train), test_records=len(test),
        val_examples=args.val_examples, test_examples=args.test_examples,
    )  # fmt: skip
    notes = check_data_lengths(
        info, data=args.data, max_length=args.max_length, train_examples=train,
        eval_examples=test, max_new_tokens=args.max_new_tokens if accuracy_examples else None,
        no_generation_fix="or pass --accuracy-examples 0",
    )  # fmt: skip
    settings = StudySettings(
        model=args.model, data=args.data, methods=args.methods, policies=args.policies,
        data_format=args.data_format, data_split=args.data_split, data_columns=args.data_columns,
        eval_data=args.eval_data,
        seeds=args.seeds, steps=args.steps, batch_size=args.batch_size,
        max_length=args.max_length, lr_factors=args.lr_factors, lr_base=args.lr_base, tune_seeds=args.tune_seeds,
        gammas=args.gammas, intervals=args.intervals, state_policies=args.state_policies,
        eh=args.eh, eh_lr_factors=args.eh_lr_factors, lora_rank=args.lora_rank,
        train_examples=args.train_examples,
        val_examples=args.val_examples, test_examples=args.test_examples,
        accuracy_examples=accuracy_examples, max_new_tokens=args.max_new_tokens,
        score_batches=args.score_batches, outlier_threshold=args.outlier_threshold,
        probe_steps=args.probe_steps, norm_kind=args.norm_kind, norm_reduce=args.norm_reduce,
        device=str(device), precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio, eval_every=args.eval_every,
        presets=args.presets,
    )  # fmt: skip
    variants = settings.variants()
    # Under torchrun rank 0 alone checks, locks and writes --out (and reads it to resume).
    main_rank = args.distributed is None or os.environ.get("RANK") == "0"
    folder = (
        StudyFolder(args.out, settings.to_dict(), overwrite=args.overwrite).check()
        if main_rank
        else None
    )
    if folder is not None and folder.resuming:
        from lisa_apps.study.runner import _read_runs, check_resumed_rates

        check_resumed_rates(settings, _read_runs(folder), f"--out {args.out}")

    def work() -> int:
        import logging
        import warnings

        from lisa_apps.recipes import RECIPE_FILE, resolved_recipe
        from lisa_apps.study import run_study
        from lisa_apps.training.distributed import run_in_process_group

        if not args.verbose:
            # One line per run is the study's log; the per-step and per-switch logs of its many
            # runs would bury it (-v shows them).
            for name in ("lisa", "lisa_apps.training", "lisa_apps.data", "diagnostics"):
                logging.getLogger(name).setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        started = time.perf_counter()
        planned = sum(len(settings.learning_rates(v)) for v in variants) * len(
            settings.tuning_seeds
        ) + len(variants) * (settings.seeds - len(settings.tuning_seeds))
        say = print if main_rank else lambda *_: None
        say(
            f"lisa study: {len(variants)} variants ({', '.join(v.name for v in variants)}) x "
            f"{settings.seeds} seeds, {len(settings.lr_factors)} rates each"
            + (f" on the first {len(settings.tuning_seeds)} seeds" if settings.tune_seeds else "")
            + f": {planned} runs of {settings.steps} steps on {settings.model}"
            + (f", {args.distributed}" if args.distributed else "")
        )
        for note in notes:
            say(f"note: {note}")

        def study():
            # Opened here to record the resolved options first (run_study's `with` reuses it).
            with folder if folder is not None else contextlib.nullcontext():
                if folder is not None:
                    folder.write_text(RECIPE_FILE, resolved_recipe(args))
                return run_study(settings, folder, log=say, distributed=args.distributed)

        result = run_in_process_group(study, device) if args.distributed else study()
        if not main_rank:
            return 0
        print(format_summary(result.summary))
        skipped = len(result.runs) - result.trained
        print(
            f"trained {result.trained} runs"
            + (f" ({skipped} were finished before and not trained again)" if skipped else "")
            + f"; wrote {', '.join(result.files)} to {args.out} in "
            f"{time.perf_counter() - started:.0f} s"
        )
        return 0

    return work


def format_summary(summary) -> str:
    """Test loss and accuracy per variant: mean [95% interval], and the paired difference."""
    if summary.empty:
        return "no finished runs"

    def interval(row, prefix: str, pattern: str) -> str:
        mean, low, high = row[f"{prefix}_mean"], row[f"{prefix}_low"], row[f"{prefix}_high"]
        if mean != mean:  # NaN
            return "-"
        if low != low:
            return format(mean, pattern)
        return f"{mean:{pattern}} [{low:{pattern}}, {high:{pattern}}]"

    lines = [f"{'variant':26}{'lr':>9}  {'test loss':28}{'accuracy':26}loss - uniform LISA"]
    for _, row in summary.iterrows():
        lines.append(
            f"{row['variant']:26}{row['learning_rate']:>9.3g}  "
            f"{interval(row, 'test_loss', '.4f'):28}{interval(row, 'test_accuracy', '.3f'):26}"
            f"{interval(row, 'loss_diff', '+.4f')}"
        )
    return "\n".join(lines)
