"""Every mistake a new user makes is refused before any work: one line on stderr, exit 2.

Each case runs the real `lisa` dispatcher in-process with a guard that fails the test if any
model weights are loaded (checks may read configs, build meta-device models and load a
tokenizer, nothing more). Where the mistake involves an output folder, the folder holds an
earlier run's results, and the test checks that not one of its files changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnostics.policy import SamplingPolicy
from lisa.signature import layer_signature
from lisa_apps.cli import main
from lisa_apps.models import meta_model
from lisa_apps.tiny import build_tiny_model, build_tiny_tokenizer, tiny_config

FAST = [
    "--model", "tiny-llama", "--steps", "1", "--train-examples", "4", "--eval-examples", "1",
    "--max-length", "384", "--max-new-tokens", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished `lisa train` run: the folder later mistakes must leave untouched."""
    out = tmp_path_factory.mktemp("earlier") / "lisa-run"
    assert main(["train", *FAST, "--no-accuracy", "--no-save-model", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, diagnosed):
    """Input files of every kind, good and bad, made once."""
    root = tmp_path_factory.mktemp("inputs")
    made = {"root": root, "norms": diagnosed / "norms.csv", "policy": diagnosed / "policy.json"}
    made["a_file"] = root / "a-file.txt"
    made["a_file"].write_text("not a folder\n")
    made["foreign"] = root / "foreign"
    made["foreign"].mkdir()
    (made["foreign"] / "notes.txt").write_text("mine\n")
    made["bad_jsonl"] = root / "bad.jsonl"
    made["bad_jsonl"].write_text('{"instruction": "a", "output": "b"}\n{not json}\n')
    made["broken_policy"] = root / "broken.json"
    made["broken_policy"].write_text("{ this is not json")
    # A policy with the right block count derived on another model (other widths).
    other = layer_signature(meta_model(tiny_config("tiny-llama", hidden=32)))
    foreign = SamplingPolicy(np.full(4, 0.5), 2, tuple(f"block.{i}" for i in range(4)), other)
    made["foreign_policy"] = foreign.to_json(root / "foreign-policy.json")
    # Model folders: config but no weights; weights but no tokenizer; a too-large tokenizer.
    no_weights = root / "no-weights"
    tiny_config("tiny-llama").save_pretrained(no_weights)
    build_tiny_tokenizer().save_pretrained(no_weights)
    made["no_weights"] = no_weights
    no_tokenizer = root / "no-tokenizer"
    build_tiny_model("tiny-llama").save_pretrained(no_tokenizer)
    made["no_tokenizer"] = no_tokenizer
    small_vocab = root / "small-vocab"
    build_tiny_model("tiny-llama", vocab_size=128).save_pretrained(small_vocab)
    build_tiny_tokenizer().save_pretrained(small_vocab)
    made["small_vocab"] = small_vocab
    made["empty_dir"] = root / "empty"
    made["empty_dir"].mkdir()
    return made


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        path.relative_to(folder).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@contextlib.contextmanager
def no_weights_loaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    import transformers

    import lisa_apps.models
    import lisa_apps.tiny

    with monkeypatch.context() as patch:
        patch.setattr(lisa_apps.models, "load_model", refuse)
        patch.setattr(lisa_apps.models, "_load_smollm2", refuse)
        patch.setattr(lisa_apps.tiny, "build_tiny_model", refuse)
        patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
        yield


# (id, argv with {placeholders}, what the one line must say)
CASES = [
    ("out-is-a-file", ["train", *FAST, "--out", "{a_file}"], "is a file"),
    ("out-under-a-file", ["train", *FAST, "--out", "{a_file}/run"], "is a file, not a folder"),
    ("out-unwritable", ["train", *FAST, "--out", "/proc/lisa-run"], "cannot write in"),
    ("out-earlier-run", ["train", "--method", "lora", *FAST, "--out", "{earlier}"],
     "already holds a run's results"),
    ("out-foreign-overwrite", ["train", *FAST, "--out", "{foreign}", "--overwrite"],
     "holds no lisa-run.json"),
    ("diagnose-into-earlier", ["diagnose", "--model", "tiny-llama", "--out", "{earlier}"],
     "already holds"),
    ("demo-into-earlier", ["demo", "--model", "tiny-llama", "--out", "{earlier}"],
     "already holds"),
    ("plot-into-earlier", ["plot", "--norms", "{norms}", "--out", "{earlier}"], "already holds"),
    ("policy-gamma-7", ["policy", "--norms", "{norms}", "--gamma", "7", "--out", "{root}/p.json"],
     "--gamma 7 is more than the 4 blocks"),
    ("policy-kind-rms", ["policy", "--norms", "{norms}", "--gamma", "1", "--kind", "rms"],
     "invalid choice: 'rms'"),
    ("policy-norms-is-a-policy", ["policy", "--norms", "{policy}", "--gamma", "1",
                                  "--out", "{root}/p.json"], "is not a norms table"),
    ("policy-norms-missing", ["policy", "--norms", "{root}/missing.csv", "--gamma", "1",
                              "--out", "{root}/p.json"], "does not exist"),
    ("policy-out-exists", ["policy", "--norms", "{norms}", "--gamma", "1", "--out", "{policy}"],
     "already exists; pass --overwrite"),
    ("policy-floor-infeasible", ["policy", "--norms", "{norms}", "--gamma", "1", "--floor", "0.9",
                                 "--out", "{root}/p.json"], "floor"),
    ("plot-norms-missing", ["plot", "--norms", "{root}/missing.csv", "--out", "{root}/plots"],
     "does not exist"),
    ("plot-policy-missing", ["plot", "--policy", "{root}/missing.json", "--out", "{root}/plots"],
     "does not exist"),
    ("plot-history-without-policy", ["plot", "--norms", "{norms}", "--history", "{policy}",
                                     "--out", "{root}/plots"], "pass --policy too"),
    ("plot-kind-unknown", ["plot", "--norms", "{norms}", "--kind", "spectral"], "invalid choice"),
    ("diagnose-gamma-9", ["diagnose", "--model", "tiny-llama", "--gamma", "9",
                          "--out", "{earlier}"], "--gamma 9 is more than the 4 blocks"),
    ("diagnose-kinds-unknown", ["diagnose", "--kinds", "weight,norm"], "norm not among"),
    ("diagnose-policy-kind-not-recorded", ["diagnose", "--model", "tiny-llama", "--kinds",
                                           "weight", "--policy-kind", "delta"],
     "--policy-kind delta is not among --kinds"),
    ("diagnose-floor-infeasible", ["diagnose", "--model", "tiny-llama", "--floor", "0.9"],
     "--floor 0.9 is infeasible"),
    ("diagnose-model-folder-empty", ["diagnose", "--model", "{empty_dir}"], "has no config.json"),
    ("demo-steps-0", ["demo", "--model", "tiny-llama", "--steps", "0"],
     "argument --steps: must be an integer >= 1, got 0"),
    ("demo-gamma-9", ["demo", "--model", "tiny-llama", "--gamma", "9", "--out", "{earlier}"],
     "--gamma 9 is more than the 4 blocks"),
    ("threads-negative", ["train", *FAST, "--threads", "-1", "--out", "{earlier}"],
     "argument --threads: must be an integer >= 1, got -1"),
    ("threads-zero", ["diagnose", "--threads", "0"], "argument --threads: must be an integer >= 1"),
    ("model-folder-without-weights", ["train", *FAST, "--model", "{no_weights}",
                                      "--out", "{earlier}"], "has a config.json but no weights"),
    ("model-folder-without-tokenizer", ["train", *FAST, "--model", "{no_tokenizer}",
                                        "--out", "{earlier}"], "has no tokenizer vocabulary"),
    ("tokenizer-larger-than-vocabulary", ["train", *FAST, "--model", "{small_vocab}",
                                          "--out", "{earlier}"],
     "the tokenizer has 259 tokens but the model's vocabulary has 128 rows"),
    ("model-unknown", ["train", *FAST, "--model", "no-such-model", "--out", "{earlier}"],
     "'no-such-model' is neither a built-in name"),
    ("layers-model-unknown", ["layers", "no-such-model"], "neither a built-in name"),
    ("layers-blocks-path-wrong", ["layers", "tiny-gpt2", "--blocks-path", "transformer.hh"],
     "has no submodule 'hh'"),
    ("train-gamma-0", ["train", *FAST, "--gamma", "0", "--out", "{earlier}"],
     "gamma 0 trains no block"),
    ("train-gamma-9", ["train", *FAST, "--gamma", "9", "--out", "{earlier}"],
     "--gamma 9 is more than the 4 blocks"),
    ("data-missing", ["train", *FAST, "--data", "{root}/missing.jsonl", "--out", "{earlier}"],
     "neither 'math' nor an existing .jsonl file"),
    ("data-bad-json-line", ["train", *FAST, "--data", "{bad_jsonl}", "--out", "{earlier}"],
     "bad.jsonl:2: invalid JSON"),
    ("policy-from-another-model", ["train", *FAST, "--policy", "{foreign_policy}",
                                   "--out", "{earlier}"], "derived on another model"),
    ("policy-with-lora", ["train", "--method", "lora", *FAST, "--policy", "{policy}",
                          "--out", "{earlier}"], "--policy applies to --method lisa only"),
    ("policy-broken-json", ["train", *FAST, "--policy", "{broken_policy}", "--out", "{earlier}"],
     "is not valid JSON"),
    ("policy-missing", ["train", *FAST, "--policy", "{root}/none.json", "--out", "{earlier}"],
     "does not exist"),
    ("policy-gamma-disagrees", ["train", *FAST, "--policy", "{policy}", "--gamma", "1",
                                "--out", "{earlier}"], "disagrees with the policy's gamma 2"),
    ("lisa-flag-with-ft", ["train", "--method", "ft", *FAST, "--freeze-head", "--out", "{earlier}"],
     "--freeze-head apply to --method lisa only"),
    ("sampler-unknown", ["train", *FAST, "--sampler", "no-such", "--out", "{earlier}"],
     "is not registered"),
    ("sampler-needs-options", ["train", *FAST, "--sampler", "weighted", "--out", "{earlier}"],
     "--sampler weighted"),
    ("lr-negative", ["train", *FAST, "--lr", "-1", "--out", "{earlier}"],
     "argument --lr: must be a number > 0"),
    ("lr-nan", ["train", *FAST, "--lr", "nan", "--out", "{earlier}"], "must be a finite number"),
    ("precision-unknown", ["train", *FAST, "--precision", "fp8", "--out", "{earlier}"],
     "invalid choice: 'fp8'"),
    ("device-unknown", ["train", *FAST, "--device", "tpu", "--out", "{earlier}"], "device='tpu'"),
    ("eval-examples-0", ["train", *FAST, "--eval-examples", "0", "--out", "{earlier}"],
     "argument --eval-examples: must be an integer >= 1"),
    ("out-missing", ["train", *FAST], "the following arguments are required: --out"),
    ("option-unknown", ["train", *FAST, "--learning-rate", "1e-4", "--out", "{earlier}"],
     "unrecognized arguments"),
]
if not torch.cuda.is_available():
    CASES.append(
        ("device-cuda-absent", ["train", *FAST, "--device", "cuda", "--out", "{earlier}"],
         "asks for CUDA but this machine has none")
    )  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_refused_with_one_line_and_exit_2_before_any_work(
    argv, message, files, earlier_run, monkeypatch, capsys, tmp_path
):
    monkeypatch.chdir(tmp_path)
    places = {k: str(v) for k, v in files.items()} | {"earlier": str(earlier_run)}
    argv = [arg.format(**places) for arg in argv]
    before = fingerprint(earlier_run)
    capsys.readouterr()
    with no_weights_loaded(monkeypatch):
        code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"lisa {argv[0]}: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert fingerprint(earlier_run) == before
    assert not (tmp_path / "policy.json").exists() and not any(tmp_path.iterdir())


def test_policy_without_out_refuses_to_replace_a_policy_json_in_the_current_folder(
    files, monkeypatch, tmp_path, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy.json").write_text('{"edited": "by hand"}\n')
    assert main(["policy", "--norms", str(files["norms"]), "--gamma", "1"]) == 2
    assert (tmp_path / "policy.json").read_text() == '{"edited": "by hand"}\n'
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_overwrite_of_an_earlier_run_leaves_no_file_of_it_behind(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--no-accuracy", "--out", str(out)]) == 0
    assert (out / "active_sets.json").exists()
    argv = ["train", "--method", "lora", *FAST, "--no-accuracy", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    assert not (out / "active_sets.json").exists()  # the LISA run's file went with its run
    manifest = json.loads((out / "lisa-run.json").read_text())
    assert manifest["arguments"]["method"] == "lora"
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != "lisa-run.json")
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed.startswith("wrote ") and "active_sets.json" not in printed
