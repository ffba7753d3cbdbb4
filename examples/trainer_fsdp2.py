"""LISA in transformers.Trainer under accelerate's FSDP2: LisaCallback on a sharded model.

The recipe is an accelerate config, examples/recipes/accelerate-fsdp2.yaml (FSDP, fsdp_version
2, one FSDP2 unit per decoder block; the embedding, final norm and head stay in the root unit,
which LISA trains at every step anyway). Launch this script with it, one process per GPU:

    accelerate launch --config_file examples/recipes/accelerate-fsdp2.yaml \\
        examples/trainer_fsdp2.py --model ./Llama-2-7b-hf --out runs/trainer-fsdp2

What LISA needs under FSDP2 and how the Trainer gives it:

- The optimizer must hold every parameter, and no block may be frozen before it is built: under
  FSDP the Trainer shards the model first (accelerate's fully_shard) and builds AdamW after, over
  the sharded parameters (DTensors) that require grad, which is all of them because
  LisaCallback freezes nothing until training begins. It then builds the engine on that
  optimizer, and each switch sets requires_grad on the DTensors of a block, drops their grads
  and deletes their AdamW state: a block that is not active holds no state on any rank.
- Every rank must train the same blocks: the engine seeds the same generator on every rank and
  compares the draws at every switch (one all-reduce), as in the plain FSDP2 loop.

accelerate shards only on GPUs (and other accelerators): it sets up FSDP only for a
multi-accelerator run (accelerate.state.AcceleratorState: FSDP replaces MULTI_GPU, MULTI_NPU,
...). On a CPU machine `PartialState._prepare_backend` gives DistributedType.NO (each process
would train alone; also with use_cpu: true in the config) or, with TrainingArguments(use_cpu=True),
MULTI_CPU (DDP over gloo), and the FSDP settings are ignored without a word. This script refuses that before training (exit status 2), after
printing what it prepared:

    config: FSDP version 2 from accelerate, 2 processes
    model: tiny-llama, 4 blocks
    callback: LisaCallback(gamma=2, interval=2) attached
    error: accelerate set up DistributedType.NO on this machine, not FSDP ...

Writes into --out (rank 0): log_history.csv and active_sets.json; the Trainer's own
checkpoints (--save-steps) go into --out/trainer, each rank writing its shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import pandas as pd
import torch
from transformers import Trainer, TrainingArguments

from lisa.callback import LisaCallback
from lisa.config import LisaConfig
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa.layers import LayerMap
from lisa_apps.data import DataCollator, load_examples, tokenize_examples
from lisa_apps.models import DEFAULT_MODEL, load_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--out", required=True, help="output folder (rank 0 writes it)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--gamma", type=int, default=2, help="blocks trained per period")
    parser.add_argument("--interval", type=int, default=5, help="optimizer steps per period K")
    parser.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATES["lisa"])
    parser.add_argument("--batch-size", type=int, default=4, help="examples per process")
    parser.add_argument("--train-examples", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--save-steps", type=int, default=0, help="checkpoint every n steps")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def refuse(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    args = parse_args()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    say = print if rank == 0 else (lambda *_: None)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        refuse(
            "this script runs under accelerate's FSDP: accelerate launch --config_file "
            "examples/recipes/accelerate-fsdp2.yaml examples/trainer_fsdp2.py ..."
        )
    say(f"config: FSDP version {os.environ.get('FSDP_VERSION')} from accelerate, {world} processes")

    model, tokenizer = load_model(args.model, seed=args.seed)
    say(f"model: {args.model}, {LayerMap.from_model(model).num_blocks} blocks")
    train = tokenize_examples(
        load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed),
        tokenizer,
        max_length=args.max_length,
    )
    callback = LisaCallback(LisaConfig(gamma=args.gamma, interval=args.interval, seed=args.seed))
    training_args = TrainingArguments(
        output_dir=os.path.join(args.out, "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to=[],
        seed=args.seed,
        disable_tqdm=True,
        remove_unused_columns=False,  # the features are already input_ids/attention_mask/labels
        ddp_find_unused_parameters=True,  # used only where accelerate falls back to DDP
    )
    say(f"callback: LisaCallback(gamma={args.gamma}, interval={args.interval}) attached")
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=DataCollator(tokenizer),
        callbacks=[callback],
    )
    if not trainer.is_fsdp_enabled:
        refuse(
            f"accelerate set up {trainer.accelerator.distributed_type} on this machine, not "
            "FSDP: it shards only on GPUs, so LISA would train an unsharded model. Run on "
            "GPUs, or on the CPU use lisa train --distributed fsdp2 (docs/scaling.md)"
        )
    trainer.train()

    if not all(hasattr(p, "placements") for p in trainer.model.parameters()):
        refuse("the Trainer trained without FSDP2 sharding (parameters are not DTensors)")
    # Only E, H, extras and the active blocks hold AdamW state; the engine dropped the rest.
    with_state = sum(1 for p in trainer.model.parameters() if trainer.optimizer.state.get(p))
    total = sum(1 for _ in trainer.model.parameters())
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        logs = pd.DataFrame(trainer.state.log_history)
        logs.to_csv(os.path.join(args.out, "log_history.csv"), index=False)
        with open(os.path.join(args.out, "active_sets.json"), "w") as file:
            json.dump([list(map(int, b)) for _, b in callback.lisa.history], file)
        steps = logs[logs["loss"].notna()]
        print(steps[["step", "loss", "lisa_active_blocks"]].to_string(index=False))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print(f"rank {rank}: draws {callback.lisa.history}")
    print(f"rank {rank}: AdamW state on {with_state} of {total} parameters; peak {peak:,} bytes")


if __name__ == "__main__":
    main()
