"""`lisa diagnose` end to end on the tiny random Llama."""

from __future__ import annotations

import json

from diagnostics.policy import SamplingPolicy
from diagnostics.recorder import load_norms
from lisa_apps.models import load_model
from lisa_apps.outputs import MANIFEST


def test_diagnose_writes_every_file_and_lists_them_in_its_manifest(diagnosed):
    names = {p.name for p in diagnosed.iterdir()}
    expected = {
        "norms.csv", "norms.json", "skew.csv", "policy.json", "layer_norms.png",
        "norm_heatmap.png", "policy.png", "layer_norms-delta.png", "recipe.yaml",
    }  # fmt: skip
    assert names == expected | {MANIFEST}
    manifest = json.loads((diagnosed / MANIFEST).read_text())
    assert manifest["status"] == "finished" and set(manifest["files"]) == expected
    table = load_norms(diagnosed)
    assert set(table["method"]) == {"lora", "ft"}
    assert sorted(table["step"].unique()) == [0, 1, 2, 3]
    sidecar = json.loads((diagnosed / "norms.json").read_text())
    assert set(sidecar["probes"]) == {"lora", "ft"} and sidecar["num_blocks"] == 4
    assert all(sidecar["probes"][m]["peak_memory_bytes"] > 0 for m in ("lora", "ft"))
    policy = SamplingPolicy.from_json(diagnosed / "policy.json")
    assert policy.gamma == 2 and policy.num_blocks == 4
    assert policy.provenance["model"] == "tiny-llama"
    policy.check_compatible(load_model("tiny-llama")[0])
