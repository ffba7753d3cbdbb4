"""`lisa policy`: a policy JSON from a saved norms table."""

from __future__ import annotations

import pytest

from diagnostics.policy import SamplingPolicy
from lisa_apps.cli import main


def test_policy_command_derives_from_saved_norms(diagnosed, tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["policy", "--norms", str(diagnosed / "norms.csv"), "--gamma", "1", "--kind", "delta",
            "--floor", "0.1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    policy = SamplingPolicy.from_json(out)
    assert policy.gamma == 1 and policy.inclusion_probabilities.min() >= 0.1 - 1e-12
    assert policy.provenance["kind"] == "delta" and policy.provenance["model"] == "tiny-llama"
    assert "inclusion probabilities" in capsys.readouterr().out


def test_policy_command_replaces_its_file_only_with_overwrite(diagnosed, tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["policy", "--norms", str(diagnosed), "--gamma", "1", "--out", str(out)]
    assert main(argv) == 0
    out.write_text(out.read_text().replace('"gamma": 1', '"gamma": 1 '))  # a hand edit
    edited = out.read_text()
    assert main(argv) == 2 and out.read_text() == edited
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0 and out.read_text() != edited


# -- score sources (--source) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "extra"),
    [
        ("grad-norm", ["--reduce", "rms"]),
        ("outlier", ["--threshold", "3", "--direction", "reverse"]),
    ],
)
def test_policy_from_a_model_source_records_the_source_and_its_settings(tmp_path, capsys, source, extra):
    out = tmp_path / "p.json"
    argv = ["policy", "--source", source, "--model", "tiny-llama", "--gamma", "2", "--batches",
            "2", "--batch-size", "2", "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    policy = SamplingPolicy.from_json(out)
    assert policy.provenance["score_source"] == source and policy.provenance["num_batches"] == 2
    assert policy.provenance["model"] == "tiny-llama" and policy.num_blocks == 4
    if source == "outlier":
        assert policy.provenance["source_settings"] == {"threshold": 3.0, "direction": "reverse"}
    else:
        assert policy.provenance["source_settings"] == {"reduce": "rms"}
    assert f"scores ({source})" in capsys.readouterr().out


def test_policy_from_a_scores_file(tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("block,score\n0,4\n1,1\n2,1\n3,2\n")
    out = tmp_path / "p.json"
    argv = ["policy", "--source", "file", "--scores", str(scores), "--model", "tiny-llama",
            "--gamma", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    policy = SamplingPolicy.from_json(out)
    assert policy.inclusion_probabilities.tolist() == [1.0, 0.25, 0.25, 0.5]
    assert policy.provenance["source_settings"] == {"path": str(scores)}


def test_norm_ratio_is_the_default_source_and_is_recorded(diagnosed, tmp_path):
    out = tmp_path / "p.json"
    assert main(["policy", "--norms", str(diagnosed), "--gamma", "1", "--out", str(out)]) == 0
    provenance = SamplingPolicy.from_json(out).provenance
    assert provenance["score_source"] == "norm-ratio"
    assert provenance["source_settings"] == {"kind": "weight", "reduce": "l2",
                                             "lora_method": "lora", "ft_method": "ft"}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "grad-norm", "--norms", "n.csv"], "--norms applies only to --source norm-ratio; drop it"),
        (["--source", "file", "--model", "tiny-llama"], "--source file needs --scores"),
        (["--source", "norm-ratio"], "--source norm-ratio needs --norms"),
        (["--source", "outlier", "--model", "tiny-llama", "--gamma", "9"],
         "--gamma 9 is more than the 4 blocks of tiny-llama"),
        (["--source", "outlier", "--threshold", "0"], "argument --threshold: must be a number > 0"),
        (["--source", "file", "--scores", "nope.json", "--model", "tiny-llama"],
         "--scores nope.json does not exist"),
        (["--source", "gradnorm"], "argument --source: invalid choice"),
    ],
)
def test_bad_source_inputs_are_refused_with_one_line(tmp_path, capsys, argv, message):
    if "--gamma" not in argv:
        argv = [*argv, "--gamma", "2"]
    assert main(["policy", *argv, "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "p.json").exists()


def test_a_scores_file_with_the_wrong_count_is_refused(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text("[1, 2, 3]")
    argv = ["policy", "--source", "file", "--scores", str(scores), "--model", "tiny-llama",
            "--gamma", "2", "--out", str(tmp_path / "p.json")]  # fmt: skip
    assert main(argv) == 2
    assert "3 scores for tiny-llama, which has 4 blocks" in capsys.readouterr().err


def test_policy_help_lists_every_source(capsys):
    with pytest.raises(SystemExit):
        main(["policy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("norm-ratio", "grad-norm", "outlier", "file"):
        assert f"{name}:" in text
