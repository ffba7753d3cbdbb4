"""scripts/evidence_study.sh: `lisa study` takes every option of both its commands."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from lisa_apps.cli import build_parser
from lisa_apps.commands import study
from lisa_apps.tiny import build_tiny_model, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "evidence_study.sh"


@pytest.fixture(scope="module")
def six_blocks(tmp_path_factory) -> Path:
    """A saved tiny Llama of 6 blocks: the owlore preset samples 5 (tiny-llama has 4)."""
    folder = tmp_path_factory.mktemp("tiny6") / "model"
    build_tiny_model("tiny-llama", num_blocks=6).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


def _commands(tmp_path: Path, model: Path, **env) -> list[list[str]]:
    printed = subprocess.run(
        ["bash", str(SCRIPT), "1"], capture_output=True, text=True, check=True,
        env=os.environ | {"EVIDENCE_PRINT": "1", "EVIDENCE_MODEL": str(model),
                          "EVIDENCE_OUT": str(tmp_path / "evidence"), **env},
    )  # fmt: skip
    return [shlex.split(line) for line in printed.stdout.splitlines()]


def _prepared(argv: list[str]):
    """Parse one `lisa study` command line and run its checks (no weights, no training)."""
    assert argv[1] == "study"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__.endswith("SubParsersAction"))
    study.configure(subparsers.choices["study"])
    threads = torch.get_num_threads()
    try:
        return parser.parse_args(argv[1:]), study.prepare(parser.parse_args(argv[1:]))
    finally:
        torch.set_num_threads(threads)  # --threads 1 must not slow the other tests


@pytest.mark.parametrize(("grid", "dry"), [("kept", "0"), ("full", "1"), ("ehlr", "0")])
def test_both_studies_of_the_script_pass_every_check_of_lisa_study(tmp_path, six_blocks, grid, dry):
    commands = _commands(tmp_path, six_blocks, EVIDENCE_GRID=grid, EVIDENCE_DRY=dry)
    assert [argv[argv.index("--data") + 1] for argv in commands] == ["math", "pydoc"]
    for argv in commands:
        args, work = _prepared(argv)  # refuses an option or value `lisa study` does not take
        assert callable(work)
        assert (args.lr_scheduler, args.warmup_ratio) == ("cosine", 0.1)
        # The sweep is centred on the rates the study ran at, not on today's defaults.
        ran_at = {"lisa": 4e-4, "lora": 1e-3, "ft": 5e-5}
        assert args.lr_base == {method: ran_at[method] for method in args.methods}
        if grid == "full":  # owlore samples 5 blocks: the 6-block model takes it
            assert args.presets == ("badam", "owlore") and args.gammas == (2, 4)
        if grid == "ehlr":  # the per-group variant, in its own folders beside the kept grid's
            assert args.eh_lr_factors == (0.25,) and args.methods == ("lisa",)
            assert str(args.out).endswith(f"{args.data}-ehlr")
        if dry == "0":  # the study of docs/results.md, as the issue sets it
            assert (args.seeds, args.steps, args.eval_every) == (3, 300, 50)


def test_the_script_refuses_a_part_it_does_not_have():
    result = subprocess.run(["bash", str(SCRIPT), "3"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "give the part, 1 or 2" in result.stderr
