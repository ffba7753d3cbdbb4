"""`lisa layers MODEL`: the layer map printed from the config, without loading weights."""

from __future__ import annotations

import pytest

from lisa.layers import EMBED, EXTRAS, HEAD, LayerMap


def test_layers_command_prints_every_group_with_counts_and_shares(tiny_llama, tmp_path, capsys):
    from lisa_apps.cli import main
    from lisa_apps.tiny import build_tiny_tokenizer

    model = tiny_llama(num_blocks=3, vocab=320)  # rows for every token of the tokenizer
    model.save_pretrained(tmp_path)
    build_tiny_tokenizer().save_pretrained(tmp_path)
    assert main(["layers", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line.split() and line.split()[0] in (EMBED, HEAD, EXTRAS, "total", "block.0", "block.2")
    }
    layer_map = LayerMap.from_model(model)
    total = sum(p.numel() for p in model.parameters())
    for group in (EMBED, "block.0", "block.2", HEAD, EXTRAS):
        count, share = rows[group]
        assert int(count.replace(",", "")) == layer_map.numel(group)
        assert float(share) == pytest.approx(100 * layer_map.numel(group) / total, abs=0.005)
    assert int(rows["total"][0].replace(",", "")) == total
    assert "not tied" in out and "'model.layers'" in out


def test_layers_command_reports_tying_and_rejects_a_bad_blocks_path(capsys):
    from lisa_apps.cli import main

    assert main(["layers", "tiny-gpt2", "--blocks-path", "transformer.h"]) == 0
    out = capsys.readouterr().out
    assert "tied: embed and head share one weight" in out and "(explicit)" in out
    assert main(["layers", "tiny-gpt2", "--blocks-path", "transformer.hh"]) == 2
    assert "'transformer' has no submodule 'hh'" in capsys.readouterr().err
