"""LISA inside transformers.Trainer: one LisaCallback added to an ordinary Trainer run.

`lisa.callback.LisaCallback` is all that LISA adds to a Trainer. It freezes nothing when it is
made: the Trainer builds its optimizer only over parameters that require grad, so freezing
before training would train the first draw forever. The callback builds the LISA engine on the
Trainer's own model and optimizer when training begins and, once per optimizer step, lets it
switch the active blocks every `interval` steps, dropping the gradients and AdamW state of the
blocks that leave. This script fine-tunes on generated maths problems with a stock Trainer and
TrainingArguments, scores the held-out loss with `trainer.evaluate()` before and after, prints the
per-step logs (loss, `lisa_active_blocks`, `lisa_freed_bytes`: the callback writes them into the
Trainer's logs) and ends with `lisa.memory.memory_report` of the Trainer's optimizer, where only
the embedding, head, extras and the gamma active blocks hold optimizer state.

    python examples/trainer_lisa.py                                    # SmolLM2-135M, ~3 min
    python examples/trainer_lisa.py --model tiny-llama --steps 2 --out /tmp/trainer  # seconds

LISA trains only E, H and gamma blocks at a time and wants a larger learning rate than full
fine-tuning (the default here is the one `lisa train` uses for LISA). Writes into --out (the
Trainer's output_dir): log_history.csv and memory.csv; --save-steps adds Trainer checkpoints,
which carry the LISA schedule so that `trainer.train(resume_from_checkpoint=True)` continues it.
"""

from __future__ import annotations

import argparse
import logging

import pandas as pd
import torch
from transformers import Trainer, TrainingArguments

from lisa.callback import LisaCallback
from lisa.config import LisaConfig
from lisa.defaults import DEFAULT_LEARNING_RATES
from lisa.memory import memory_report
from lisa_apps.commands.arguments import positive_int
from lisa_apps.data import DataCollator, load_examples, tokenize_examples
from lisa_apps.models import DEFAULT_MODEL, load_model
from lisa_apps.outputs import RunFolder


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or a local folder")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument(
        "--out", default="trainer-out", help="output folder (the Trainer's output_dir is out/trainer)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--gamma", type=int, default=2, help="blocks trained per period")
    parser.add_argument("--interval", type=int, default=5, help="optimizer steps per period K")
    parser.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATES["lisa"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument(
        "--save-steps", type=int, default=0, help="checkpoint every n steps (0: none)"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--train-examples", type=positive_int, default=1000, help="generated training problems")
    parser.add_argument("--eval-examples", type=int, default=32, help="held-out examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (see below)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # One thread by default: the reference machine has 2 cores shared by several processes, and
    # oversubscribed OpenMP threads make CPU training slower and its timings noisy.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    folder = RunFolder(args.out, command="examples/trainer_lisa.py", overwrite=args.overwrite)
    folder.open()  # refused before any work if --out holds another run's results

    model, tokenizer = load_model(args.model, seed=args.seed)
    train = tokenize_examples(
        load_examples("math", split="train", num_examples=args.train_examples, seed=args.seed),
        tokenizer,
        max_length=args.max_length,
    )
    held_out = tokenize_examples(
        load_examples("math", split="test", num_examples=args.eval_examples, seed=args.seed),
        tokenizer,
        max_length=args.max_length,
    )

    callback = LisaCallback(LisaConfig(gamma=args.gamma, interval=args.interval, seed=args.seed))
    training_args = TrainingArguments(
        output_dir=str(folder.file("trainer")),  # checkpoints go here with --save-steps
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=args.grad_accum,  # LISA switches per optimizer step
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
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=DataCollator(tokenizer),
        callbacks=[callback],
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]

    logs = pd.DataFrame(trainer.state.log_history)
    folder.write_text("log_history.csv", logs.to_csv(index=False))
    steps = logs[logs["loss"].notna()] if "loss" in logs else logs
    columns = ["step", "loss", "lisa_active_blocks", "lisa_freed_bytes"]
    print("Trainer logs (the callback adds the active blocks and the bytes it freed):")
    print(steps[columns].to_string(index=False))
    print(f"LISA draws (step, active blocks): {callback.lisa.history}")
    print(f"held-out loss: {before:.4f} before, {after:.4f} after {args.steps} steps")

    report = memory_report(model, trainer.optimizer, callback.lisa.layer_map)
    folder.write_text("memory.csv", report.to_csv(index=False))
    holding = report[(report["group"] != "total") & (report["optimizer_state_bytes"] > 0)]
    total = report.set_index("group").loc["total"]
    print(
        f"AdamW state held at the end: {total['optimizer_state_bytes']:,} bytes, by "
        f"{', '.join(holding['group'])} (active: {callback.lisa.trainable_groups()})"
    )
    folder.close()
    print(f"wrote {', '.join(folder.written)} to {folder.path}")


if __name__ == "__main__":
    main()
