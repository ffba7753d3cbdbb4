"""Default hyperparameters: the one place every runner, probe, command and doc takes them from.

The learning rates come from the sweep in docs/training-defaults.md (SmolLM2-135M, maths SFT,
batch 4, 40 steps): LISA moves only E, H and gamma blocks per period, so it wants a larger step
than full fine-tuning; LoRA starts from a zero update and wants a larger one still.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_INTERVAL",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_LORA_RANK",
    "default_lora_alpha",
]

#: AdamW learning rate per method ("lisa", "lora", "ft").
DEFAULT_LEARNING_RATES: dict[str, float] = {"lisa": 4e-4, "lora": 1e-3, "ft": 5e-5}

#: LoRA rank r of every runner and probe.
DEFAULT_LORA_RANK = 8

#: Blocks trained per period (the paper's default).
DEFAULT_GAMMA = 2

#: Optimizer steps per period K of the runners. The paper uses 20 over thousands of steps; a
#: 60-step run with K = 5 gets twelve draws instead of three.
DEFAULT_INTERVAL = 5


def default_lora_alpha(rank: int) -> float:
    """LoRA alpha for rank r: 2 r, so the update scale alpha / r is 2 (peft's common choice).

    Example:
        >>> default_lora_alpha(8)
        16.0
    """
    return 2.0 * rank
