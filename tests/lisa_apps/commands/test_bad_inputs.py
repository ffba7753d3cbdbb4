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
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from diagnostics.policy import SamplingPolicy
from lisa.signature import layer_signature
from lisa_apps import cli
from lisa_apps.cli import main
from lisa_apps.data import jsonl_split
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
    made["diagnosed"] = diagnosed
    # A model folder whose weights lack two of its four blocks.
    missing_blocks = root / "missing-blocks"
    build_tiny_model("tiny-llama").save_pretrained(missing_blocks)
    build_tiny_tokenizer().save_pretrained(missing_blocks)
    weights = missing_blocks / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {k: v for k, v in tensors.items() if not k.startswith(("model.layers.2.", "model.layers.3."))},
        weights,
        metadata={"format": "pt"},
    )
    made["missing_blocks"] = missing_blocks
    # A config that leaves the sizes to transformers' defaults.
    made["no_sizes"] = root / "no-sizes"
    made["no_sizes"].mkdir()
    (made["no_sizes"] / "config.json").write_text('{"model_type": "llama", "vocab_size": 300}\n')
    # A JSONL file with four training records and one held-out record (by content hash).
    records = {"train": [], "test": []}
    for i in range(200):
        record = {"instruction": f"What is {i} plus 1?", "input": "", "output": f"#### {i + 1}"}
        split = jsonl_split(record)
        if len(records[split]) < (4 if split == "train" else 1):
            records[split].append(record)
    made["five_records"] = root / "five.jsonl"
    made["five_records"].write_text(
        "".join(json.dumps(r) + "\n" for r in records["train"] + records["test"])
    )
    # Histories the tiny policy (gamma 2 of 4 blocks) cannot have drawn.
    made["history_gamma4"] = root / "gamma4.json"
    made["history_gamma4"].write_text(json.dumps([[0, [0, 1]], [5, [0, 1, 2, 3]]]))
    made["history_repeat"] = root / "repeat.json"
    made["history_repeat"].write_text(json.dumps([[0, [1, 1]]]))
    # A norms table without block rows.
    norms = pd.read_csv(made["norms"])
    made["blockless_norms"] = root / "blockless.csv"
    norms[norms["block_index"].isna()].to_csv(made["blockless_norms"], index=False)
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
     "missing.jsonl: no such file; --data takes 'math', an existing .json/.jsonl/.parquet/.csv"),
    ("data-bad-json-line", ["train", *FAST, "--data", "{bad_jsonl}", "--out", "{earlier}"],
     "bad.jsonl:2: invalid JSON"),
    ("policy-from-another-model", ["train", *FAST, "--policy", "{foreign_policy}",
                                   "--out", "{earlier}"], "derived on another model"),
    ("policy-with-lora", ["train", "--method", "lora", *FAST, "--policy", "{policy}",
                          "--out", "{earlier}"],
     "--policy applies only to --method lisa; drop it or pass --method lisa"),
    ("policy-broken-json", ["train", *FAST, "--policy", "{broken_policy}", "--out", "{earlier}"],
     "is not valid JSON"),
    ("policy-missing", ["train", *FAST, "--policy", "{root}/none.json", "--out", "{earlier}"],
     "does not exist"),
    ("policy-gamma-disagrees", ["train", *FAST, "--policy", "{policy}", "--gamma", "1",
                                "--out", "{earlier}"], "disagrees with the policy's gamma 2"),
    ("lisa-flag-with-ft", ["train", "--method", "ft", *FAST, "--freeze-head", "--out", "{earlier}"],
     "--freeze-head applies only to --method lisa; drop it or pass --method lisa"),
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
    # Lengths against the model's positions (its config) and the data (its tokenised records).
    ("max-length-beyond-positions", ["train", *FAST, "--max-length", "4096", "--out", "{earlier}"],
     "--max-length 4096 is more than the 1024 positions of tiny-llama"),
    ("max-length-1", ["train", *FAST, "--max-length", "1", "--out", "{earlier}"],
     "--max-length 1 leaves no room for a prompt and a response token"),
    ("max-length-below-every-prompt", ["train", *FAST, "--max-length", "8", "--out", "{earlier}"],
     "none leaves room for a response; use --max-length"),
    ("max-new-tokens-beyond-positions", ["train", *FAST, "--max-new-tokens", "5000",
                                         "--out", "{earlier}"],
     "--max-new-tokens 5000: the longest held-out prompt has"),
    ("demo-probe-max-length-1", ["demo", "--model", "tiny-llama", "--probe-max-length", "1",
                                 "--out", "{earlier}"], "--probe-max-length 1 leaves no room"),
    ("demo-probe-max-length-beyond-positions", ["demo", "--model", "tiny-llama",
                                                "--probe-max-length", "2048", "--out", "{earlier}"],
     "--probe-max-length 2048 is more than the 1024 positions"),
    ("diagnose-max-length-below-every-prompt", ["diagnose", "--model", "tiny-llama",
                                                "--max-length", "8", "--out", "{earlier}"],
     "none leaves room for a response"),
    ("study-max-new-tokens-beyond-positions", ["study", "--model", "tiny-llama", "--data",
                                               "{five_records}", "--val-examples", "1",
                                               "--test-examples", "1", "--max-new-tokens", "1024",
                                               "--out", "{root}/study"],
     "--max-new-tokens 1024: the longest held-out prompt"),
    # LoRA ranks above the smallest adapted layer side (tiny-llama: k_proj is 64 -> 32).
    ("lora-rank-beyond-layers", ["train", "--method", "lora", *FAST, "--lora-rank", "100000",
                                 "--out", "{earlier}"],
     "--lora-rank 100000 is more than 32, the smaller side of tiny-llama's adapted layer"),
    ("diagnose-rank-beyond-layers", ["diagnose", "--model", "tiny-llama", "--rank", "33",
                                     "--out", "{earlier}"], "--rank 33 is more than 32"),
    # Validation and test sizes against the file's records.
    ("study-val-examples-all-records", ["study", "--model", "tiny-llama", "--data", "{five_records}",
                                        "--val-examples", "4", "--test-examples", "1",
                                        "--out", "{root}/study"],
     "--val-examples 4: --data {five_records} holds 4 training records"),
    ("study-test-examples-beyond-file", ["study", "--model", "tiny-llama", "--data",
                                         "{five_records}", "--val-examples", "1",
                                         "--test-examples", "50", "--out", "{root}/study"],
     "--test-examples 50: --data {five_records} holds only 1 held-out records"),
    # Flags of another method, every one, in one form.
    ("interval-with-ft", ["train", "--method", "ft", *FAST, "--interval", "3", "--out", "{earlier}"],
     "--interval applies only to --method lisa; drop it or pass --method lisa"),
    ("state-policy-with-lora", ["train", "--method", "lora", *FAST, "--state-policy", "keep",
                                "--out", "{earlier}"], "--state-policy applies only to --method lisa"),
    ("lisa-flags-with-lora", ["train", "--method", "lora", *FAST, "--interval", "3",
                              "--freeze-head", "--out", "{earlier}"],
     "--interval, --freeze-head apply only to --method lisa; drop them or pass --method lisa"),
    ("lora-rank-with-lisa", ["train", *FAST, "--lora-rank", "4", "--out", "{earlier}"],
     "--lora-rank applies only to --method lora; drop it or pass --method lora"),
    ("study-gammas-without-lisa", ["study", "--model", "tiny-llama", "--methods", "ft,lora",
                                   "--gammas", "2", "--out", "{root}/study"],
     "--gammas applies only to LISA runs; drop it or add lisa to --methods"),
    ("study-lora-rank-without-lora", ["study", "--model", "tiny-llama", "--methods", "ft,lisa",
                                      "--lora-rank", "4", "--out", "{root}/study"],
     "--lora-rank applies only to LoRA runs; drop it or add lora to --methods"),
    ("policy-flag-of-another-source", ["policy", "--source", "grad-norm", "--model", "tiny-llama",
                                       "--norms", "{norms}", "--gamma", "1",
                                       "--out", "{root}/p.json"],
     "--norms applies only to --source norm-ratio; drop it or pass --source norm-ratio"),
    # Weight files that lack parameters the config asks for.
    ("model-folder-missing-blocks", ["train", *FAST, "--model", "{missing_blocks}",
                                     "--out", "{earlier}"],
     "its weight files lack 18 of the model's 39 parameters (model.layers.2."),
    ("estimate-config-without-sizes", ["estimate", "{no_sizes}"],
     "does not set hidden_size, num_hidden_layers"),
    # Histories a policy cannot have drawn.
    ("plot-history-other-gamma", ["plot", "--policy", "{policy}", "--history", "{history_gamma4}",
                                  "--out", "{root}/plots"],
     "the draw at step 5 has 4 blocks, but --policy {policy} draws gamma 2"),
    ("plot-history-repeated-block", ["plot", "--policy", "{policy}", "--history",
                                     "{history_repeat}", "--out", "{root}/plots"],
     "--history {history_repeat}: the draw at step 0 holds block 1 twice"),
    # Clear messages: a folder as --policy, the flag's own name, a norms table without blocks.
    ("policy-is-a-folder", ["train", *FAST, "--policy", "{diagnosed}", "--out", "{earlier}"],
     "--policy {diagnosed} is a folder, not a policy file; pass --policy {diagnosed}/policy.json"),
    ("plot-policy-is-a-folder", ["plot", "--policy", "{root}", "--out", "{root}/plots"],
     "is a folder, not a policy file; pass the policy.json"),
    ("policy-norms-without-blocks", ["policy", "--norms", "{blockless_norms}", "--gamma", "1",
                                     "--out", "{root}/p.json"], "has no rows of blocks"),
    ("estimate-gamma-without-lisa", ["estimate", "tiny-llama", "--methods", "ft,lora", "--gamma",
                                     "2"],
     "--gamma applies only to lisa rows; drop it or add lisa to --methods"),
    ("policy-max-length-beyond-positions", ["policy", "--source", "grad-norm", "--model",
                                            "tiny-llama", "--max-length", "2048", "--gamma", "1",
                                            "--out", "{root}/p.json"],
     "--max-length 2048 is more than the 1024 positions of tiny-llama"),
    ("lr-factors-negative", ["study", "--model", "tiny-llama", "--lr-factors", "-1,1",
                             "--out", "{root}/study"],
     "argument --lr-factors: must be a number > 0, got -1"),
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
    assert message.format(**places) in lines[0]
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


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_rank_0_alone_prints_a_refusal_and_no_rank_loads_weights(
    rank, earlier_run, monkeypatch, capsys
):
    launch = {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "29500"}  # fmt: skip
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    # The real wait lets rank 0 print before torchrun stops every rank; here no rank 0 runs.
    monkeypatch.setattr(cli, "OTHER_RANKS_WAIT_S", 0.0)
    before = fingerprint(earlier_run)
    argv = ["train", "--distributed", "fsdp2", *FAST, "--max-length", "8", "--out", str(earlier_run)]
    with no_weights_loaded(monkeypatch):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    if rank == "0":
        assert len(lines) == 1 and "--max-length 8" in lines[0], err
    else:
        assert lines == [], err
    assert fingerprint(earlier_run) == before


def test_a_lora_run_is_usable_from_another_folder_and_as_a_model_to_train_on(
    tmp_path, monkeypatch, capsys
):
    from peft import AutoPeftModelForCausalLM

    from lisa_apps.models import load_model

    base, _ = load_model("tiny-llama", seed=1)
    workspace = tmp_path / "work"
    base.save_pretrained(workspace / "base")
    build_tiny_tokenizer().save_pretrained(workspace / "base")
    monkeypatch.chdir(workspace)
    short = ["--steps", "1", "--train-examples", "8", "--eval-examples", "1", "--no-accuracy",
             "--skip-before", "--no-progress", "--max-length", "200"]  # fmt: skip
    # A relative base folder, as a user types it.
    assert main(["train", "--method", "lora", "--model", "base", *short, "--out", "run"]) == 0
    out = capsys.readouterr().out
    # Some generated problems are longer than 200 tokens: counted in one note, not refused.
    assert "training records of --data math are longer than --max-length 200 tokens" in out
    adapter = workspace / "run" / "model"
    record = json.loads((adapter / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == str((workspace / "base").resolve())
    monkeypatch.chdir(tmp_path)  # another folder: the recorded base still resolves
    merged = AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload()
    loaded, _ = load_model(str(adapter))
    expected = merged.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in loaded.state_dict().items())
    # `lisa train --model RUN/model` trains on base + adapter, merged.
    assert main(["train", "--model", str(adapter), *short, "--out", str(tmp_path / "again")]) == 0
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert metrics["model"] == str(adapter)


def test_a_lora_run_on_a_built_in_model_records_the_name_and_is_rebuilt_with_its_seed(tmp_path):
    from lisa_apps.models import load_model

    short = ["--steps", "1", "--train-examples", "4", "--eval-examples", "1", "--no-accuracy",
             "--skip-before", "--no-progress", "--seed", "3"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--method", "lora", "--model", "tiny-llama", *short, "--out", str(run)]) == 0
    record = json.loads((run / "model" / "adapter_config.json").read_text())
    assert record["base_model_name_or_path"] == "tiny-llama"
    # The base is rebuilt with the run's --seed (from lisa-run.json): its frozen weights match.
    loaded, _ = load_model(str(run / "model"))
    base, _ = load_model("tiny-llama", seed=3)
    name = "model.embed_tokens.weight"  # not adapted, so unchanged by the merge
    assert torch.equal(loaded.state_dict()[name], base.state_dict()[name])
