"""NormRecorder: tidy rows, files that round-trip, crash safety, the Trainer callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from diagnostics.recorder import COLUMNS, NormRecorder, load_norms, load_sidecar, sidecar_path
from lisa.layers import LayerMap

NUM_GROUPS = 7  # tiny_llama untied: embed, 4 blocks, head, extras


def _nudge(model, step: int) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * step)


def test_rows_are_tidy_with_id_columns_first(tiny_llama):
    model = tiny_llama()
    recorder = NormRecorder(kinds=("weight", "delta"), reduce=("l2", "rms"), run="r1", method="ft")
    new = recorder.record(0, model)
    assert tuple(new.columns) == COLUMNS
    assert len(new) == NUM_GROUPS * 2 * 2
    table = recorder.table
    assert set(table["kind"]) == {"weight", "delta"} and set(table["reduce"]) == {"l2", "rms"}
    assert table.loc[table["group"] == "block.2", "block_index"].eq(2).all()
    assert table.loc[table["group"] == "embed", "block_index"].isna().all()
    # The automatic step-0 snapshot makes delta zero at step 0.
    assert table.loc[table["kind"] == "delta", "norm"].eq(0.0).all()


def test_every_n_steps_records_step_zero_and_multiples(tiny_llama):
    model = tiny_llama()
    recorder = NormRecorder(every=2)
    for step in range(7):
        recorder.record(step, model)
    assert sorted(recorder.table["step"].unique()) == [0, 2, 4, 6]
    assert recorder.record_count == 4 and recorder.record_seconds > 0


def test_files_round_trip(tiny_llama, tmp_path):
    model = tiny_llama()
    recorder = NormRecorder(
        kinds=("weight", "delta"), run="rt", method="ft", path=tmp_path, settings={"lr": 1e-3}
    )
    for step in range(3):
        recorder.record(step, model)
        _nudge(model, step + 1)
    csv_path = recorder.save()
    assert csv_path == tmp_path / "norms.csv"
    loaded = load_norms(tmp_path)
    pd.testing.assert_frame_equal(loaded, recorder.table, check_exact=False, rtol=1e-15)
    sidecar = load_sidecar(csv_path)
    assert sidecar["group_names"] == list(LayerMap.from_model(model).group_names)
    assert sidecar["model_class"] == "LlamaForCausalLM"
    assert sidecar["settings"] == {"lr": 1e-3}
    assert set(sidecar["versions"]) == {"lisa-finetune", "torch", "transformers", "peft"}
    assert sidecar["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_streamed_file_equals_table_without_save(tiny_llama, tmp_path):
    model = tiny_llama()
    recorder = NormRecorder(path=tmp_path / "n.csv")
    for step in range(3):
        recorder.record(step, model)
        _nudge(model, 1)
    pd.testing.assert_frame_equal(load_norms(tmp_path / "n.csv"), recorder.table)
    assert sidecar_path(tmp_path / "n.csv").exists()


def test_interrupted_recording_leaves_only_complete_rows(tiny_llama, tmp_path):
    model = tiny_llama()
    recorder = NormRecorder(kinds=("weight", "delta"), path=tmp_path)

    def training_loop():
        for step in range(10):
            recorder.record(step, model)
            _nudge(model, 1)
            if step == 2:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        training_loop()
    loaded = load_norms(tmp_path)
    assert sorted(loaded["step"].unique()) == [0, 1, 2]
    assert len(loaded) == 3 * NUM_GROUPS * 2
    assert loaded["norm"].notna().all()


def test_a_row_cut_short_by_a_kill_is_dropped(tiny_llama, tmp_path):
    model = tiny_llama()
    recorder = NormRecorder(path=tmp_path)
    recorder.record(0, model)
    with open(tmp_path / "norms.csv", "a") as file:
        file.write("run,ft,1,block.0,0,wei")  # a write interrupted mid-row
    loaded = load_norms(tmp_path)
    assert len(loaded) == NUM_GROUPS and loaded["step"].eq(0).all()


def test_killed_process_keeps_every_complete_row(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from diagnostics.recorder import NormRecorder
        from lisa_apps.tiny import build_tiny_model
        model = build_tiny_model("tiny-llama", num_blocks=3, hidden=16, heads=2, vocab_size=64)
        recorder = NormRecorder(path={str(tmp_path)!r})
        for step in range(100):
            recorder.record(step, model)
            if step == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    loaded = load_norms(tmp_path)
    assert sorted(loaded["step"].unique()) == [0, 1, 2, 3, 4]
    assert len(loaded) == 5 * 6  # embed, 3 blocks, head, extras


def test_save_without_path_is_refused():
    with pytest.raises(ValueError, match="needs a path"):
        NormRecorder().save()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kinds": ("norm",)}, "kinds"), ({"reduce": "max"}, "reduce"), ({"every": 0}, "every")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NormRecorder(**kwargs)


def test_sidecar_of_non_sidecar_json_is_refused(tmp_path):
    (tmp_path / "norms.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a norms sidecar"):
        load_sidecar(tmp_path / "norms.csv")


def test_trainer_callback_records_step_zero_and_every_n(tiny_llama, tmp_path):
    from transformers import Trainer, TrainingArguments

    from diagnostics.recorder_callback import NormRecorderCallback

    model = tiny_llama()
    generator = torch.Generator().manual_seed(0)
    features = [
        {"input_ids": ids, "attention_mask": [1] * 8, "labels": ids}
        for ids in torch.randint(0, 128, (16, 8), generator=generator).tolist()
    ]

    def collate(batch):
        return {key: torch.tensor([f[key] for f in batch]) for key in batch[0]}

    recorder = NormRecorder(kinds=("weight", "delta"), every=2, method="ft", path=tmp_path / "n")
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=features,
        data_collator=collate,
        callbacks=[NormRecorderCallback(recorder)],
    )
    trainer.train()
    loaded = load_norms(tmp_path / "n")
    assert sorted(loaded["step"].unique()) == [0, 2, 4]
    delta = loaded[(loaded["kind"] == "delta")].set_index(["step", "group"])["norm"]
    assert delta.loc[0].eq(0.0).all() and (delta.loc[4] > 0).all()
    assert os.path.exists(sidecar_path(tmp_path / "n" / "norms.csv"))
