"""Writes the evidence tables of docs/results.md (section 7) and docs/training-defaults.md from
the evidence study's files.

The study (scripts/evidence_study.sh) leaves one `lisa study` folder per data set; its result
files are copied into docs/evidence/DATA/ (runs.csv, curves.csv, settings.json), and every table
here is computed from them with the study's own statistics (lisa_apps.study): the rate chosen on
validation, the held-out loss at each point of the curve with its 95% t interval over seeds,
differences paired by seed, and the equal-wall-time comparison.

Run:
    .venv/bin/python scripts/evidence_report.py --copy evidence  # copy a finished study's files
                                                                 # and draw its curves
    .venv/bin/python scripts/evidence_report.py --write           # rewrite the two pages' tables

tests/test_docs.py fails when a page's table differs from what this script computes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = ROOT / "docs" / "evidence"
DATA_SETS = {"math": "maths problems (generated)", "pydoc": "Python documentation (real text)"}
FILES = ("runs.csv", "curves.csv", "settings.json")
PAGES = {"results": ROOT / "docs" / "results.md", "defaults": ROOT / "docs" / "training-defaults.md"}
BEGIN, END = "<!-- evidence-report:{} begin -->", "<!-- evidence-report:{} end -->"
LORA, BASE = "lora-r8", "lisa-uniform"
NAMES = {"lisa-uniform": "LISA gamma 2", "lisa-uniform-gamma4": "LISA gamma 4", "lora-r8": "LoRA r8",
         "ft": "FT", "lisa-uniform-ehlr0.25": "LISA gamma 2, E/H at 0.25x"}  # fmt: skip
# Variants run after the kept grid, each in its own study folder DATA-SUFFIX beside DATA (the
# evidence script's EVIDENCE_GRID=SUFFIX). Same seeds, data order, starting weights and draws:
# their runs join the kept grid's, paired by seed.
LATER = ("ehlr",)
# Runs of the kept grid that ran in a later working session than the rest of their study, when
# the machine ran about 1.5 times slower a step (2026-12-02, 13:07 on). Step times are only
# comparable within one session, so an equal-time comparison pairs two runs of a seed only if
# they ran in the same session; each later study (LATER) is a session of its own.
RESUMED_LATER = {"pydoc": ("lisa-uniform-gamma4-lr0.0004-seed2", "lora-r8-lr0.001-seed2")}


def _rate(rate: float) -> str:
    """2e-4 rather than 0.0002."""
    mantissa, exponent = f"{rate:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _name(variant: str) -> str:
    return NAMES.get(variant, variant)


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    number = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if math.isnan(low):
        return number
    return f"{number} ({low:+.3f} to {high:+.3f})" if signed else f"{number} ({low:.3f} to {high:.3f})"


def _difference(row: pd.Series) -> str:
    text = _interval(row["loss_diff_mean"], row["loss_diff_low"], row["loss_diff_high"], signed=True)
    outside = row["loss_diff_low"] > 0 or row["loss_diff_high"] < 0
    return f"**{text}**" if outside else text


def _own_names(runs: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A later study's base variant under its own name: uniform LISA at an E/H rate factor f
    other than 1 is ``lisa-uniform-ehlrF`` (the name the kept grid's study would give it); its
    run ids follow, so they do not collide with the kept grid's."""
    names = {}
    for _, row in runs.drop_duplicates("variant").iterrows():
        factor = row.get("eh_lr_factor")
        own = row["variant"]
        if isinstance(factor, float) and not math.isnan(factor) and factor != 1 and "-ehlr" not in own:
            own = f"{own}-ehlr{factor:g}"
        names[row["variant"]] = own

    def rename(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame["run_id"] = [run_id.replace(v, names[v], 1) for run_id, v in zip(frame["run_id"], frame["variant"], strict=True)]
        frame["variant"] = frame["variant"].map(names)
        return frame

    return rename(runs), rename(curves)


def load(folder: Path) -> dict:
    """The study's runs, curves, settings and its chosen rates (lisa_apps.study.choose_rates),
    with the runs of its later studies (``LATER``: folders FOLDER-SUFFIX) joined to them."""
    from lisa_apps.study import choose_rates

    runs = pd.read_csv(folder / "runs.csv")
    curves = pd.read_csv(folder / "curves.csv")
    settings = json.loads((folder / "settings.json").read_text())
    runs["session"] = runs["run_id"].isin(RESUMED_LATER.get(folder.name, ())).astype(int)
    for number, suffix in enumerate(LATER, start=2):
        later = folder.with_name(f"{folder.name}-{suffix}")
        if (later / "runs.csv").is_file():
            more = _own_names(pd.read_csv(later / "runs.csv"), pd.read_csv(later / "curves.csv"))
            more[0]["session"] = number
            runs = pd.concat([runs, more[0]], ignore_index=True)
            curves = pd.concat([curves, more[1]], ignore_index=True)
    tuning = tuple(range(int(settings.get("tune_seeds") or settings["seeds"])))
    return {"runs": runs, "curves": curves, "settings": settings,
            "chosen": choose_rates(runs, tuning)}  # fmt: skip


def _tuning_table(study: dict) -> list[str]:
    runs, chosen = study["runs"], study["chosen"]
    lines = ["| variant | rate | validation loss, seed 0 | held-out loss, seed 0 | chosen |",
             "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    tuned = runs[runs["seed"] == 0].sort_values(["variant", "learning_rate"])
    for variant in chosen:
        for _, row in tuned[tuned["variant"] == variant].iterrows():
            mark = "yes" if row["learning_rate"] == chosen[variant] else ""
            lines.append(f"| {_name(variant)} | {_rate(row['learning_rate'])} | {row['val_loss']:.4f} | "
                         f"{row['test_loss']:.4f} | {mark} |")  # fmt: skip
    return lines


def _steps_table(study: dict, pairs: list[tuple[str, str]]) -> list[str]:
    """Mean loss per variant per step, and each (variant - reference) paired per step."""
    from lisa_apps.study import summarise_curves

    curves, chosen = study["curves"], study["chosen"]
    means = summarise_curves(curves, chosen, None)
    header = ["step"] + [_name(v) for v in chosen] + [f"{_name(a)} − {_name(b)}" for a, b in pairs]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---:"] * len(header)) + " |"]
    diffs = {(a, b): summarise_curves(curves, chosen, b).set_index(["variant", "step"]) for a, b in pairs}
    for step in sorted(means["step"].unique()):
        cells = [str(int(step))]
        for variant in chosen:
            row = means[(means["variant"] == variant) & (means["step"] == step)].iloc[0]
            cells.append(_interval(row["eval_loss_mean"], row["eval_loss_low"], row["eval_loss_high"]))
        for a, b in pairs:
            cells.append(_difference(diffs[(a, b)].loc[(a, step)]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _time_table(study: dict, pairs: list[tuple[str, str]]) -> list[str]:
    """Each (variant - reference) at the reference's evaluation times (equal wall time)."""
    from lisa_apps.study import summarise_curves_at_time

    curves, runs, chosen = study["curves"], study["runs"], study["chosen"]
    lines = ["| comparison | at the reference's step | seconds of training | the other's step | "
             "pairs | difference (paired, 95% t interval) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for a, b in pairs:
        seeds = _same_session_seeds(runs, chosen, a, b)
        if not seeds:
            continue
        kept = curves["seed"].isin(seeds) & curves["variant"].isin([a, b])
        at = summarise_curves_at_time(curves[kept], runs, {a: chosen[a], b: chosen[b]}, b)
        for _, row in at[at["variant"] == a].iterrows():
            reached = "-" if math.isnan(row["variant_step_mean"]) else f"{row['variant_step_mean']:.0f}"
            lines.append(f"| {_name(a)} − {_name(b)} | {int(row['reference_step'])} | "
                         f"{row['seconds_mean']:.0f} | {reached} | {int(row['num_pairs'])} | {_difference(row)} |")  # fmt: skip
    return lines


def _same_session_seeds(runs: pd.DataFrame, chosen: dict, a: str, b: str) -> list[int]:
    """The seeds at which the chosen runs of ``a`` and ``b`` ran in the same session."""
    def sessions(variant: str) -> dict[int, int]:
        rows = runs[(runs["variant"] == variant) & (runs["learning_rate"] == chosen[variant])]
        return dict(zip(rows["seed"].astype(int), rows["session"].astype(int), strict=True))

    first, second = sessions(a), sessions(b)
    return sorted(seed for seed in first.keys() & second.keys() if first[seed] == second[seed])


def _end_table(study: dict) -> list[str]:
    from lisa_apps.study import summarise

    summary = summarise(study["runs"], study["chosen"], BASE)
    has_accuracy = summary["test_accuracy_mean"].notna().any()
    header = "| variant | rate | seeds | held-out loss after 300 steps | s/step (training and curve scoring) |"
    header += " accuracy (greedy, exact match) |" if has_accuracy else ""
    lines = [header, "| --- | ---: | ---: | --- | ---: |" + (" --- |" if has_accuracy else "")]
    for _, row in summary.iterrows():
        line = (f"| {_name(row['variant'])} | {_rate(row['learning_rate'])} | {row['num_seeds']} | "
                f"{_interval(row['test_loss_mean'], row['test_loss_low'], row['test_loss_high'])} | "
                f"{row['seconds_per_step_mean']:.2f} |")  # fmt: skip
        if has_accuracy:
            accuracy = [row[f"test_accuracy_{key}"] for key in ("mean", "low", "high")]
            line += f" {_interval(*accuracy)} |"
        lines.append(line)
    return lines


def _pairs(chosen: dict) -> list[tuple[str, str]]:
    lisa = [v for v in chosen if v.startswith("lisa")]
    pairs = [(v, LORA) for v in lisa if LORA in chosen]
    pairs += [(v, BASE) for v in lisa if v != BASE]
    return pairs


def render_results(evidence: Path = EVIDENCE) -> str:
    lines: list[str] = []
    for data, label in DATA_SETS.items():
        folder = evidence / data
        if not (folder / "runs.csv").is_file():
            lines += [f"### {label}", "", "Not run.", ""]
            continue
        study = load(folder)
        pairs = _pairs(study["chosen"])
        lines += [f"### {label}", "", "Rates tried on seed 0, chosen by the validation loss:", ""]
        lines += [*_tuning_table(study), ""]
        lines += ["At the chosen rates, over the seeds: held-out loss at each evaluation (mean, 95% t "
                  "interval) and differences paired by seed (bold: the interval excludes 0):", ""]
        lines += [*_steps_table(study, pairs), ""]
        lines += ["At equal wall time: each comparison read at the times the reference (the right-"
                  "hand side) took to reach its evaluation steps; the other run's loss is its "
                  "curve interpolated in time (`summary_time.csv`; '-' where it had not scored "
                  "yet or had already finished):", ""]
        lines += [*_time_table(study, pairs), ""]
        lines += ["End of the runs:", "", *_end_table(study), ""]
    return "\n".join(lines).rstrip() + "\n"


def load_all(evidence: Path = EVIDENCE) -> dict[str, dict]:
    """Every data set's study (``load``), by data set name."""
    return {data: load(evidence / data) for data in DATA_SETS}


def _relative_validation(study: dict, variant: str) -> pd.Series:
    """Per rate of the sweep: mean validation loss over the tuning seeds over the best rate's."""
    runs, settings = study["runs"], study["settings"]
    tuning = range(int(settings.get("tune_seeds") or settings["seeds"]))
    tuned = runs[(runs["variant"] == variant) & runs["seed"].isin(tuning)]
    means = tuned.groupby("learning_rate")["val_loss"].mean()
    return means / means.min()


def default_rate(studies: dict[str, dict], variant: str) -> float:
    """The library's default rate for a variant's method from the studies of every data set.

    Each study chooses its own rate on its validation split; where the data sets disagree,
    the default is the rate whose validation loss, relative to the best rate of the same data
    set, is lowest on average over the data sets (ties: the lower rate).
    """
    relative = pd.concat([_relative_validation(s, variant) for s in studies.values()], axis=1)
    mean = relative.mean(axis=1)
    return float(mean[mean == mean.min()].index.min())


def render_defaults(evidence: Path = EVIDENCE) -> str:
    studies = load_all(evidence)
    labels = [DATA_SETS[data].split(" (")[0] for data in studies]
    header = (["method", "rate"] + [f"{label}: validation loss (relative to the best rate)"
                                    for label in labels] + ["mean relative", "default"])  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 2) + " --- |"]
    for variant, method in ((BASE, "LISA"), (LORA, "LoRA")):
        relative = {data: _relative_validation(study, variant) for data, study in studies.items()}
        chosen = default_rate(studies, variant)
        for rate in sorted(relative[next(iter(studies))].index):
            cells = [method, _rate(rate)]
            for data, study in studies.items():
                runs = study["runs"]
                tuned = runs[(runs["variant"] == variant) & (runs["learning_rate"] == rate) & (runs["seed"] == 0)]
                cells.append(f"{tuned['val_loss'].mean():.4f} ({relative[data][rate]:.3f})")
            cells.append(f"{pd.Series({d: r[rate] for d, r in relative.items()}).mean():.3f}")
            cells.append("**yes**" if rate == chosen else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


RENDER = {"results": render_results, "defaults": render_defaults}


def plot(data: str, evidence: Path = EVIDENCE) -> Path:
    """docs/img/evidence-DATA-curves.png: the study's curves against the step and the time."""
    from lisa_apps.study import summarise, summarise_curves
    from lisa_apps.study.plot import plot_curves

    study = load(evidence / data)
    summary = summarise(study["runs"], study["chosen"], BASE)
    curves = summarise_curves(study["curves"], study["chosen"], BASE)
    return plot_curves(curves, ROOT / "docs" / "img" / f"evidence-{data}-curves.png", summary)


def block(page: str, text: str | None = None) -> str:
    """The marked block of a page, or the page with the block replaced by ``text``."""
    content = PAGES[page].read_text()
    begin, end = BEGIN.format(page), END.format(page)
    start, stop = content.index(begin) + len(begin), content.index(end)
    if text is None:
        return content[start:stop].strip("\n") + "\n"
    return content[:start] + "\n" + text + content[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy", type=Path, help="a finished evidence study's folder (with math/ and pydoc/)")
    parser.add_argument("--write", action="store_true", help="rewrite the pages' marked blocks")
    args = parser.parse_args(argv)
    if args.copy is not None:
        for data in DATA_SETS:
            source = args.copy / data
            if not (source / "runs.csv").is_file():
                print(f"evidence_report: {source} holds no runs.csv; pass a study folder", file=sys.stderr)
                return 2
            later = [f"{data}-{suffix}" for suffix in LATER if (args.copy / f"{data}-{suffix}" / "runs.csv").is_file()]
            for folder in (data, *later):
                (EVIDENCE / folder).mkdir(parents=True, exist_ok=True)
                for name in FILES:
                    shutil.copyfile(args.copy / folder / name, EVIDENCE / folder / name)
            plot(data)
    for page, render in RENDER.items():
        text = render()
        if args.write:
            PAGES[page].write_text(block(page, text))
        else:
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
