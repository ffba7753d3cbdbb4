"""The trained model `lisa train` saves: a plain transformers folder with its tokenizer and chat
template; LoRA saves its adapters, or with --merge the weights with the adapters merged in."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lisa_apps import cli
from lisa_apps.models import load_model

RUN = [
    "train", "--model", "tiny-llama", "--method", "lora", "--steps", "2", "--lr", "1e-2",
    "--train-examples", "8", "--eval-examples", "1", "--max-length", "256", "--no-accuracy",
    "--skip-before", "--no-progress",
]  # fmt: skip

# Merging computes W + s * B @ A once in float32 where the adapted model computes x @ W and
# s * (x @ A) @ B separately: each product differs by float32 rounding (eps 1.2e-7) times the
# accumulation length (<= 128 here), compounded over 4 blocks and the head: well under 1e-4 on
# logits of order 1.
MERGE_ATOL = 1e-4


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    assert cli.main([*RUN, "--out", str(root / "adapters")]) == 0
    assert cli.main([*RUN, "--merge", "--out", str(root / "merged")]) == 0
    return root / "adapters" / "model", root / "merged" / "model"


def test_merged_lora_loads_with_auto_classes_and_chats(lora_runs):
    _, merged = lora_runs
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template  # saved with the model
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )  # fmt: skip
    output = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 3


def test_merged_weights_compute_what_the_saved_adapters_compute(lora_runs):
    adapters, merged = lora_runs
    assert (adapters / "adapter_config.json").is_file()
    base, _ = load_model("tiny-llama")  # the same seed: the base the adapters were trained on
    adapted = PeftModel.from_pretrained(base, adapters).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        expected, got = adapted(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=MERGE_ATOL, rtol=0)
    # The adapters moved the model (lr 1e-2), so the comparison above is not of two base models.
    with torch.no_grad():
        untouched = load_model("tiny-llama")[0](input_ids=ids).logits
    assert (untouched - expected).abs().max() > 100 * MERGE_ATOL
