"""run_study(): train every run of the grid, write each as it finishes, choose rates, summarise.

Order: first every variant at every rate of its sweep on the tuning seeds (seed by seed), then,
once every rate is chosen, the other seeds at the chosen rates. A run is finished when its row
is in ``runs.csv``: the row is appended (the file rewritten atomically) right after the run's
folder ``runs/RUN_ID/`` is complete, so a crash or Ctrl-C loses at most the run in progress,
whose partial folder is removed and redone when the same command runs again.

The rate of a variant is the one with the lowest mean validation loss over the tuning seeds;
the validation split is carved from the training data, and the test split is never used to
choose anything. ``summary.csv`` reports, per variant at its chosen rate, the test scores over
seeds and the paired difference to the reference LISA variant.
With ``eval_every``, each run also scores its test loss every N steps: ``curves.csv`` holds one
row per (run, step), ``summary_curves.csv`` the same statistics per variant per step and
``summary_time.csv`` each variant against the reference at equal wall time
(:func:`summarise_curves_at_time`; ``curves.png`` draws both views).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lisa_apps.study.folder import StudyFolder
from lisa_apps.study.settings import StudySettings, Variant
from lisa_apps.study.statistics import mean_interval, paired_difference

__all__ = [
    "CURVE_COLUMNS", "RUN_COLUMNS", "StudyResult", "choose_rates", "run_study", "summarise",
    "summarise_curves",
    "summarise_curves_at_time",
]  # fmt: skip

logger = logging.getLogger(__name__)

RUN_COLUMNS = (
    "run_id", "variant", "method", "policy", "gamma", "interval", "state_policy", "train_eh",
    "eh_lr_factor", "lora_rank", "seed", "learning_rate", "steps", "val_loss", "test_loss",
    "test_accuracy", "num_scored", "train_loss_last", "seconds_per_step", "peak_memory_bytes",
    "peak_memory_measure", "optimizer_state_bytes", "trainable_parameters", "wall_seconds",
)  # fmt: skip
# One row per (run, evaluation point) in curves.csv.
CURVE_COLUMNS = ("run_id", "variant", "method", "seed", "learning_rate", "step", "eval_loss")
# Variant columns shown in summary.csv before the statistics.
SUMMARY_ID_COLUMNS = ("variant", "method", "policy", "gamma", "interval", "state_policy",
                      "train_eh", "eh_lr_factor", "lora_rank")  # fmt: skip


@dataclass
class StudyResult:
    """What :func:`run_study` produced (also in its folder).

    Attributes:
        runs: every finished run (runs.csv).
        summary: per variant at its chosen rate (summary.csv).
        curves: one row per (run, step) of the held-out curves (curves.csv; empty without
            ``eval_every``).
        curve_summary: per variant at its chosen rate, per step (summary_curves.csv).
        chosen_rates: variant name -> learning rate chosen on the validation split.
        trained: how many runs this call trained (the others were finished before).
        files: names written into the folder.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    chosen_rates: dict[str, float]
    trained: int = 0
    files: list[str] = field(default_factory=list)
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURVE_COLUMNS)))
    curve_summary: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class _Run:
    variant: Variant
    seed: int
    learning_rate: float

    @property
    def run_id(self) -> str:
        return f"{self.variant.name}-lr{self.learning_rate:g}-seed{self.seed}"


def _read_runs(folder: StudyFolder | None) -> pd.DataFrame:
    path = None if folder is None else folder.path / "runs.csv"
    if path is None or not path.is_file():
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    return _with_later_columns(pd.read_csv(path))


def check_resumed_rates(settings: StudySettings, finished: pd.DataFrame, where: str = "--out") -> None:
    """Refuse to resume a study whose finished runs trained at rates its sweep no longer has.

    A variant's sweep is its method's base rate (``lr_base``, else ``lisa.defaults``) times
    each factor, and a study begun without ``lr_base`` recorded only the factors. If the default
    changed since the study began, resuming it would train a different sweep and mix two
    studies' runs in one folder: refused, naming the base rate to pass instead.

    Example:
        >>> settings = StudySettings(methods=("lisa",), lr_factors=(1.0,))
        >>> runs = pd.DataFrame({"run_id": ["a"], "variant": ["lisa-uniform"],
        ...                      "method": ["lisa"], "learning_rate": [123.0]})
        >>> check_resumed_rates(settings, runs)
        Traceback (most recent call last):
        ...
        ValueError: --out holds run a, trained at 123, which the study's sweep no longer has (...
        >>> check_resumed_rates(StudySettings(methods=("lisa",), lr_factors=(1.0,),
        ...                                   lr_base={"lisa": 123.0}), runs)
    """
    sweeps = {v.name: (v.method, settings.learning_rates(v)) for v in settings.variants()}
    for _, row in finished.iterrows():
        method, sweep = sweeps.get(str(row["variant"]), (None, None))
        if sweep is not None and float(row["learning_rate"]) not in sweep:
            # From the command (``--out PATH``) the fix names flags, from the API the settings.
            flag, elsewhere = ("--lr-base", "--out") if where.startswith("--") else ("lr_base", "folder")
            raise ValueError(
                f"{where} holds run {row['run_id']}, trained at {float(row['learning_rate']):g}, "
                f"which the study's sweep no longer has ({', '.join(f'{r:g}' for r in sweep)}): "
                f"the base rate of {method} changed since the study began (lisa.defaults); pass "
                f"the one it began at with {flag} ({method}=RATE), or start a new {elsewhere}"
            )


def _with_later_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of a study started before a column existed, with that column's value then.

    ``eh_lr_factor``: LISA's embedding and head trained at the run's rate (1), other methods
    have none.
    """
    if "eh_lr_factor" in runs.columns:
        return runs
    runs = runs.copy()
    factor = runs["method"].map(lambda method: 1.0 if method == "lisa" else math.nan)
    at = runs.columns.get_loc("train_eh") + 1 if "train_eh" in runs.columns else len(runs.columns)
    runs.insert(at, "eh_lr_factor", factor.astype(float))
    return runs


def _append_row(folder: StudyFolder, row: dict[str, Any]) -> None:
    """Add one row to runs.csv: earlier rows are kept byte for byte, the file replaced atomically.

    The row takes the file's own columns, so a study started before a column was added keeps
    its header (its runs all have that column's earlier value, as its settings are the same).
    """
    path = folder.path / "runs.csv"
    text = path.read_text() if path.is_file() else ",".join(RUN_COLUMNS) + "\n"
    columns = next(csv.reader(io.StringIO(text)))
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(
        ["" if _missing(row[c]) else row[c] for c in columns]
    )
    folder.write_text("runs.csv", text + line.getvalue())


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def choose_rates(runs: pd.DataFrame, tuning_seeds: tuple[int, ...]) -> dict[str, float]:
    """variant -> the rate with the lowest mean validation loss over the tuning seeds.

    Ties go to the smaller rate. Only runs of the tuning seeds count.

    Example:
        >>> runs = pd.DataFrame({"variant": ["ft"] * 4, "seed": [0, 0, 1, 1],
        ...                      "learning_rate": [1e-5, 2e-5, 1e-5, 2e-5],
        ...                      "val_loss": [0.5, 0.4, 0.5, 0.7]})
        >>> choose_rates(runs, (0, 1))
        {'ft': 1e-05}
    """
    tuning = runs[runs["seed"].isin(tuning_seeds)]
    chosen = {}
    for variant, frame in tuning.groupby("variant", sort=False):
        means = frame.groupby("learning_rate")["val_loss"].mean().sort_index()
        chosen[str(variant)] = float(means.idxmin())
    return chosen


def summarise(
    runs: pd.DataFrame,
    chosen_rates: dict[str, float],
    reference: str | None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per variant at its chosen rate: test loss and accuracy over seeds, costs, paired differences.

    Columns: the variant's id columns, ``learning_rate``, ``num_seeds``; for ``test_loss`` and
    ``test_accuracy``: ``_mean``, ``_std``, ``_low``, ``_high`` (Student-t interval over seeds);
    the means of ``val_loss``, ``seconds_per_step``, ``peak_memory_bytes``,
    ``optimizer_state_bytes`` and ``trainable_parameters``; and, against ``reference`` (paired by
    seed): ``loss_diff_mean``, ``loss_diff_low``, ``loss_diff_high``, ``accuracy_diff_*``,
    ``num_pairs``.
    """
    rows = []
    runs = _with_later_columns(runs)
    chosen_runs = pd.concat(
        [runs[(runs["variant"] == v) & (runs["learning_rate"] == r)] for v, r in chosen_rates.items()]
        or [runs.iloc[0:0]]
    )
    by_seed = {
        (variant, metric): dict(zip(frame["seed"].astype(int), frame[metric].astype(float), strict=True))
        for variant, frame in chosen_runs.groupby("variant", sort=False)
        for metric in ("test_loss", "test_accuracy")
    }
    for variant, frame in chosen_runs.groupby("variant", sort=False):
        first = frame.iloc[0]
        row: dict[str, Any] = {column: first[column] for column in SUMMARY_ID_COLUMNS}
        row["learning_rate"] = chosen_rates[str(variant)]
        row["num_seeds"] = int(frame["seed"].nunique())
        for metric in ("test_loss", "test_accuracy"):
            stats = mean_interval(frame[metric].astype(float), confidence)
            for key in ("mean", "std", "low", "high"):
                row[f"{metric}_{key}"] = stats[key]
        for metric in ("val_loss", "seconds_per_step", "peak_memory_bytes",
                       "optimizer_state_bytes", "trainable_parameters"):  # fmt: skip
            row[f"{metric}_mean"] = float(frame[metric].astype(float).mean())
        for metric, label in (("test_loss", "loss"), ("test_accuracy", "accuracy")):
            if reference is not None and (reference, metric) in by_seed:
                diff = paired_difference(
                    by_seed[(variant, metric)], by_seed[(reference, metric)], confidence
                )
            else:
                diff = {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan}
            row[f"{label}_diff_mean"] = diff["mean"]
            row[f"{label}_diff_low"] = diff["low"]
            row[f"{label}_diff_high"] = diff["high"]
            row["num_pairs"] = diff["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def summarise_curves(
    curves: pd.DataFrame,
    chosen_rates: dict[str, float],
    reference: str | None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per variant at its chosen rate and per step: held-out loss over seeds, paired difference.

    Columns: ``variant``, ``learning_rate``, ``step``, ``num_seeds``, ``eval_loss_mean``,
    ``_std``, ``_low``, ``_high`` (Student-t interval over seeds, as :func:`summarise`), and,
    against ``reference`` at the same step (paired by seed): ``loss_diff_mean``,
    ``loss_diff_low``, ``loss_diff_high``, ``num_pairs``.

    Example:
        >>> curves = pd.DataFrame({"variant": ["a"] * 2, "seed": [0, 1],
        ...                        "learning_rate": [1e-4] * 2, "step": [5, 5],
        ...                        "eval_loss": [1.0, 3.0]})
        >>> summarise_curves(curves, {"a": 1e-4}, None)[["step", "eval_loss_mean"]].values.tolist()
        [[5.0, 2.0]]
    """
    columns = ["variant", "learning_rate", "step", "num_seeds", "eval_loss_mean", "eval_loss_std",
               "eval_loss_low", "eval_loss_high", "loss_diff_mean", "loss_diff_low",
               "loss_diff_high", "num_pairs"]  # fmt: skip
    chosen = [
        curves[(curves["variant"] == v) & (curves["learning_rate"] == r)]
        for v, r in chosen_rates.items()
    ]
    chosen_curves = pd.concat(chosen) if chosen else curves.iloc[0:0]
    by_seed = {
        (str(variant), int(step)): dict(
            zip(frame["seed"].astype(int), frame["eval_loss"].astype(float), strict=True)
        )
        for (variant, step), frame in chosen_curves.groupby(["variant", "step"], sort=False)
    }
    rows = []
    for (variant, step), frame in chosen_curves.groupby(["variant", "step"], sort=False):
        stats = mean_interval(frame["eval_loss"].astype(float), confidence)
        key = (str(reference), int(step))
        if reference is not None and key in by_seed:
            diff = paired_difference(by_seed[(str(variant), int(step))], by_seed[key], confidence)
        else:
            diff = {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan}
        rows.append({
            "variant": variant, "learning_rate": chosen_rates[str(variant)], "step": int(step),
            "num_seeds": int(frame["seed"].nunique()),
            **{f"eval_loss_{k}": stats[k] for k in ("mean", "std", "low", "high")},
            "loss_diff_mean": diff["mean"], "loss_diff_low": diff["low"],
            "loss_diff_high": diff["high"], "num_pairs": diff["n"],
        })  # fmt: skip
    order = {name: index for index, name in enumerate(chosen_rates)}
    rows.sort(key=lambda row: (order[str(row["variant"])], row["step"]))
    return pd.DataFrame(rows, columns=columns)


def summarise_curves_at_time(
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    chosen_rates: dict[str, float],
    reference: str,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each variant against ``reference`` at equal wall time, from the curves and the step times.

    A run's evaluation at step k happened ``k * seconds_per_step`` seconds into its training
    (its own ``seconds_per_step`` from runs.csv, measured in the study's process). At each of
    the reference's evaluation points, of seed s, at time t, a variant's held-out loss is its
    own curve of seed s read at t: linear interpolation in time between its two evaluations
    around t, or missing where t lies before its first evaluation or after its last (the run
    had not scored by then, or had finished earlier: no point of it is extrapolated). The
    statistics are then those of :func:`summarise_curves`, paired by seed at the same time.

    Columns: ``variant``, ``learning_rate``, ``reference_step`` (the reference's step k),
    ``seconds_mean`` (t over the seeds), ``variant_step_mean`` (the step the variant had
    reached at t), ``num_seeds``, ``eval_loss_mean``, ``_std``, ``_low``, ``_high``,
    ``loss_diff_mean``, ``loss_diff_low``, ``loss_diff_high``, ``num_pairs``.

    Example:
        >>> curves = pd.DataFrame({"variant": ["ref", "ref", "fast", "fast"], "seed": [0] * 4,
        ...     "learning_rate": [1.0] * 4, "step": [10, 20, 10, 20],
        ...     "eval_loss": [2.0, 1.0, 1.6, 0.6], "run_id": ["r", "r", "f", "f"]})
        >>> runs = pd.DataFrame({"run_id": ["r", "f"], "seconds_per_step": [2.0, 1.0]})
        >>> at = summarise_curves_at_time(curves, runs, {"ref": 1.0, "fast": 1.0}, "ref")
        >>> at[["variant", "reference_step", "variant_step_mean", "eval_loss_mean"]].values.tolist()
        [['ref', 10, 10.0, 2.0], ['ref', 20, 20.0, 1.0], ['fast', 10, 20.0, 0.6], ['fast', 20, nan, nan]]
    """
    columns = ["variant", "learning_rate", "reference_step", "seconds_mean", "variant_step_mean",
               "num_seeds", "eval_loss_mean", "eval_loss_std", "eval_loss_low", "eval_loss_high",
               "loss_diff_mean", "loss_diff_low", "loss_diff_high", "num_pairs"]  # fmt: skip
    seconds = dict(zip(runs["run_id"].astype(str), runs["seconds_per_step"].astype(float), strict=True))
    chosen = {
        str(variant): curves[(curves["variant"] == variant) & (curves["learning_rate"] == rate)]
        for variant, rate in chosen_rates.items()
    }
    if reference not in chosen or not len(chosen[reference]):
        return pd.DataFrame(columns=columns)

    def timeline(frame: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
        """seed -> (steps, losses, seconds per step) of one variant's curves."""
        out = {}
        for seed, run in frame.groupby("seed"):
            run = run.sort_values("step")
            per_step = seconds.get(str(run["run_id"].iloc[0]), math.nan)
            steps = run["step"].to_numpy(dtype=np.float64)
            out[int(seed)] = (steps, run["eval_loss"].to_numpy(dtype=np.float64), per_step)
        return out

    ref_lines = timeline(chosen[reference])
    ref_steps = sorted({int(k) for k in chosen[reference]["step"]})
    rows = []
    for variant, frame in chosen.items():
        lines = timeline(frame)
        for k in ref_steps:
            values, references, times, reached = {}, {}, [], []
            for seed, (ref_steps_of_seed, ref_losses, ref_per_step) in ref_lines.items():
                at = np.flatnonzero(ref_steps_of_seed == k)
                if not len(at) or seed not in lines:
                    continue
                t = k * ref_per_step
                references[seed] = float(ref_losses[at[0]])
                times.append(t)
                own_steps, own_losses, own_per_step = lines[seed]
                own_times = own_steps * own_per_step
                inside = len(own_times) and own_times[0] <= t <= own_times[-1]
                values[seed] = float(np.interp(t, own_times, own_losses)) if inside else math.nan
                if inside:
                    reached.append(t / own_per_step)
            stats = mean_interval(list(values.values()), confidence)
            diff = paired_difference(values, references, confidence)
            rows.append({
                "variant": variant, "learning_rate": chosen_rates[variant], "reference_step": k,
                "seconds_mean": float(np.mean(times)) if times else math.nan,
                "variant_step_mean": float(np.mean(reached)) if reached else math.nan,
                "num_seeds": stats["n"],
                **{f"eval_loss_{key}": stats[key] for key in ("mean", "std", "low", "high")},
                "loss_diff_mean": diff["mean"], "loss_diff_low": diff["low"],
                "loss_diff_high": diff["high"], "num_pairs": diff["n"],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _read_curves(folder: StudyFolder, runs: pd.DataFrame) -> pd.DataFrame:
    """The curves of the finished runs, from each run's ``curve.csv`` (in runs.csv order)."""
    frames = []
    for run_id in runs["run_id"].astype(str):
        path = folder.path / "runs" / run_id / "curve.csv"
        if path.is_file():
            frames.append(pd.read_csv(path))
    if not frames:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(CURVE_COLUMNS)]


def run_study(
    settings: StudySettings,
    folder: StudyFolder | None,
    *,
    log: Callable[[str], None] = print,
    plot: bool = True,
    distributed: str | None = None,
) -> StudyResult:
    """Train every unfinished run of ``settings``' grid into ``folder`` and summarise.

    Args:
        settings: the study.
        folder: a checked :class:`StudyFolder` (new, or the same study to resume); ``None`` on
            the ranks other than 0 of a distributed study, which write nothing.
        log: where progress lines go (the CLI prints them).
        plot: draw ``loss.png`` (held-out loss per variant with its interval).
        distributed: None, or under torchrun (an initialised process group) "ddp" or "fsdp2":
            every run trains on every rank as ``finetune(distributed=...)`` does; rank 0 alone
            reads and writes the folder, derives the policies and chooses the rates, and every
            rank follows its decisions (the runs still to train, the policies, the rates).

    Returns:
        A :class:`StudyResult`.
    """
    from diagnostics.runtime import resolve_device
    from lisa_apps.data import DataCollator, load_examples, tokenize_examples
    from lisa_apps.models import load_tokenizer
    from lisa_apps.study.policies import study_policies
    from lisa_apps.training import TokenizedData, resolve_precision
    from lisa_apps.training.distributed import broadcast_from_rank_zero

    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    pool = load_examples(
        settings.data, split="train", num_examples=settings.train_examples + settings.val_examples
        if settings.data == "math" else None, seed=0, **settings.data_options(),
    )  # fmt: skip
    if len(pool) <= settings.val_examples:
        raise ValueError(
            f"{settings.data}: {len(pool)} training examples cannot give {settings.val_examples} "
            "validation examples and still train; lower val_examples"
        )
    # The validation split is carved from the training data: the last val_examples of it.
    train, validation = pool[: -settings.val_examples], pool[-settings.val_examples :]
    if settings.data != "math":
        train = train[: settings.train_examples]
    test = load_examples(
        settings.data, split="test", num_examples=settings.test_examples, seed=0,
        **settings.data_options(),
    )  # fmt: skip
    data = {"train": train, "validation": validation, "test": test}

    with folder if folder is not None else contextlib.nullcontext():
        finished = _read_runs(folder)
        check_resumed_rates(settings, finished, str(folder.path) if folder is not None else "--out")
        done = broadcast_from_rank_zero(set(finished["run_id"].astype(str)))
        if folder is not None and folder.resuming and done:
            log(f"resuming {folder.path}: {len(done)} finished runs are kept and not trained again")
        tokenizer = load_tokenizer(settings.model)
        collate = DataCollator(tokenizer)
        # Tokenised once for every run (finetune would tokenise them again in each).
        data["features"] = TokenizedData.tokenize(
            train, test, tokenizer, max_length=settings.max_length
        )
        train_features = list(data["features"].train)
        val_features = tokenize_examples(validation, tokenizer, max_length=settings.max_length)
        policies = broadcast_from_rank_zero(
            study_policies(settings, train_features, collate, folder, device=device,
                           precision=precision, log=log)
            if folder is not None else None
        )  # fmt: skip
        if folder is not None:
            folder.write_json("settings.json", settings.to_dict() | {
                "num_train": len(train), "num_validation": len(validation),
                "num_test": len(test), "precision_resolved": precision,
                "device_resolved": str(device), "distributed": distributed,
            })  # fmt: skip

        variants = settings.variants()
        tuning = [_Run(v, s, r) for s in settings.tuning_seeds for v in variants
                  for r in settings.learning_rates(v)]  # fmt: skip
        trained = 0
        rows = finished
        reference = settings.base_lisa.name if "lisa" in settings.methods else None

        def train_all(plan: list[_Run]) -> None:
            nonlocal rows, trained
            todo = [run for run in plan if run.run_id not in done]
            if len(todo) < len(plan):
                log(f"skipping {len(plan) - len(todo)} finished runs of this phase")
            for number, run in enumerate(todo, 1):
                row = _train_one(
                    settings, run, data, val_features, policies, folder, device, distributed
                )
                done.add(run.run_id)
                trained += 1
                if folder is None:  # a rank other than 0: rank 0 records the run
                    continue
                _append_row(folder, row)
                rows = _read_runs(folder)
                accuracy = row["test_accuracy"]
                log(
                    f"[{number}/{len(todo)}] {run.run_id}: val loss {row['val_loss']:.4f}, test "
                    f"loss {row['test_loss']:.4f}, accuracy "
                    f"{'-' if pd.isna(accuracy) else format(accuracy, '.3f')}, "
                    f"{row['seconds_per_step']:.2f} s/step ({row['wall_seconds']:.0f} s)"
                )
                chosen = choose_rates(rows, settings.tuning_seeds)
                summary = summarise(rows, chosen, reference)
                folder.write_text("summary.csv", summary.to_csv(index=False))
                write_curves(chosen)

        def write_curves(chosen: dict[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
            curves = _read_curves(folder, rows)
            curve_summary = summarise_curves(curves, chosen, reference)
            if settings.eval_every is not None:
                folder.write_text("curves.csv", curves.to_csv(index=False))
                folder.write_text("summary_curves.csv", curve_summary.to_csv(index=False))
                if reference is not None:
                    at_time = summarise_curves_at_time(curves, rows, chosen, reference)
                    folder.write_text("summary_time.csv", at_time.to_csv(index=False))
            return curves, curve_summary

        train_all(tuning)
        # Rank 0 chooses (the other ranks hold no rows); every rank trains the chosen rates.
        chosen = broadcast_from_rank_zero(choose_rates(rows, settings.tuning_seeds))
        later = [_Run(v, s, chosen[v.name]) for s in settings.seed_list[len(settings.tuning_seeds):]
                 for v in variants]  # fmt: skip
        if later:
            log("chosen rates: " + ", ".join(f"{k} {v:g}" for k, v in chosen.items()))
        train_all(later)
        if folder is None:
            return StudyResult(rows, pd.DataFrame(), chosen, trained)
        summary = summarise(rows, chosen, reference)
        folder.write_text("summary.csv", summary.to_csv(index=False))
        if not (folder.path / "runs.csv").is_file():
            folder.write_text("runs.csv", ",".join(RUN_COLUMNS) + "\n")
        files = ["runs.csv", "summary.csv"]
        curves, curve_summary = write_curves(chosen)
        if settings.eval_every is not None:
            files += ["curves.csv", "summary_curves.csv"]
            if reference is not None:
                files.append("summary_time.csv")
        if plot and len(summary):
            from lisa_apps.study.plot import plot_curves, plot_study

            plot_study(rows, summary, folder.file("loss.png"))
            files.append("loss.png")
            if len(curve_summary):
                plot_curves(curve_summary, folder.file("curves.png"), summary)
                files.append("curves.png")
    return StudyResult(rows, summary, chosen, trained, files, curves, curve_summary)


def _lisa_config(settings: StudySettings, run: _Run, policies):
    from dataclasses import replace

    from lisa.config import LisaConfig

    variant = run.variant
    if variant.policy in ("uniform", "cyclic"):  # a sampler, not a derived policy
        return LisaConfig(
            gamma=variant.gamma, interval=variant.interval, sampler=variant.policy, seed=run.seed,
            state_policy=variant.state_policy, train_embeddings=variant.train_eh,
            train_head=variant.train_eh,
        )  # fmt: skip
    config = policies[variant.preset or variant.policy].to_lisa_config(
        interval=variant.interval, seed=run.seed, state_policy=variant.state_policy
    )
    return replace(config, train_embeddings=variant.train_eh, train_head=variant.train_eh)


def _schedule(settings: StudySettings, variant: Variant) -> dict[str, Any]:
    """A preset's own schedule, else the study's."""
    if variant.lr_scheduler is None:
        return settings.schedule_config()
    return {"lr_scheduler": variant.lr_scheduler, "warmup_steps": 0,
            "warmup_ratio": variant.warmup_ratio}  # fmt: skip


def _train_one(
    settings, run: _Run, data, val_features, policies, folder, device, distributed=None
) -> dict:
    """Train one run into runs/RUN_ID/ and return its runs.csv row (every rank computes it; a
    rank with no folder writes nothing)."""
    from lisa_apps.data import DataCollator
    from lisa_apps.sharded_load import load_for_run
    from lisa_apps.training import FinetuneConfig, evaluate_loss, finetune, generate_answers

    started = time.perf_counter()
    variant = run.variant
    name = f"runs/{run.run_id}"
    run_folder = None
    if folder is not None:
        partial = folder.path / name
        if partial.exists():  # an interrupted attempt: start it again from nothing
            shutil.rmtree(partial)
        run_folder = folder.subfolder(name)
    # Under FSDP2 a safetensors folder loads shard by shard, as in `lisa train`.
    model, tokenizer = load_for_run(
        settings.model, seed=run.seed, distributed=distributed, method=variant.method
    )
    # E and H at the variant's factor times the run's rate; a tied E/H weight takes lr_embed.
    eh_rates = (
        {"lr_embed": variant.eh_lr_factor * run.learning_rate,
         "lr_head": variant.eh_lr_factor * run.learning_rate}
        if variant.method == "lisa" and variant.train_eh and variant.eh_lr_factor != 1.0
        else {}
    )  # fmt: skip
    config = FinetuneConfig(
        method=variant.method,
        steps=settings.steps,
        learning_rate=run.learning_rate,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        seed=run.seed,
        lora_rank=settings.lora_rank,
        lisa=_lisa_config(settings, run, policies) if variant.method == "lisa" else None,
        max_new_tokens=settings.max_new_tokens,
        score_accuracy=False,  # scored below on the first accuracy_examples test problems
        device=str(device),
        precision=settings.precision,
        gradient_checkpointing=settings.gradient_checkpointing,
        distributed=distributed,
        **_schedule(settings, variant),
        **eh_rates,
    )
    result = finetune(
        model, tokenizer, data["train"], data["test"], config, out_dir=run_folder,
        save_model=False, progress=False, evaluate_before=False, eval_every=settings.eval_every,
        features=data["features"],
    )  # fmt: skip
    metrics = result.metrics
    if settings.eval_every is not None:
        curve = pd.DataFrame(metrics["eval_curve"], columns=["step", "eval_loss"])
        ids = {"run_id": run.run_id, "variant": variant.name, "method": variant.method,
               "seed": run.seed, "learning_rate": run.learning_rate}  # fmt: skip
        curve = curve.assign(**ids)[list(CURVE_COLUMNS)]
        if run_folder is not None:
            run_folder.write_text("curve.csv", curve.to_csv(index=False))
    val_loss = evaluate_loss(
        result.model, val_features, DataCollator(tokenizer), batch_size=config.eval_batch_size
    )
    accuracy, num_scored = math.nan, 0
    problems = data["test"][: settings.accuracy_examples]
    # Chat and text sets carry no reference answer: only the losses are scored for them.
    if settings.accuracy_examples and any(p.get("answer") is not None for p in problems):
        predictions = generate_answers(
            result.model, tokenizer, problems, batch_size=len(problems),
            max_new_tokens=settings.max_new_tokens,
        )  # fmt: skip
        scored = predictions["correct"].dropna()
        num_scored = len(scored)
        accuracy = float(scored.astype(bool).mean()) if num_scored else math.nan
        if run_folder is not None:
            buffer = io.StringIO()
            predictions.to_csv(buffer, index=False)
            run_folder.write_text("predictions.csv", buffer.getvalue())
    row = {
        "run_id": run.run_id,
        **variant.row(),
        "seed": run.seed,
        "learning_rate": run.learning_rate,
        "steps": settings.steps,
        "val_loss": val_loss,
        "test_loss": metrics["after"]["eval_loss"],
        "test_accuracy": accuracy,
        "num_scored": num_scored,
        "train_loss_last": metrics["train_loss_last"],
        "seconds_per_step": metrics["seconds_per_step"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "peak_memory_measure": metrics["peak_memory_measure"],
        "optimizer_state_bytes": metrics["optimizer_state_bytes"],
        "trainable_parameters": metrics["trainable_parameters"],
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if run_folder is not None:
        run_folder.write_json("study-row.json", row)
        run_folder.close()
    return row
