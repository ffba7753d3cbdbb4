"""`lisa policy`: a policy JSON from a saved norms table."""

from __future__ import annotations

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
