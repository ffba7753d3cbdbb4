"""Default hyperparameters: the one place every runner, probe, command and doc takes them from.

LISA's and LoRA's learning rates, the schedule and the warm-up come from the 300-step evidence
study of docs/results.md section 7 (SmolLM2-135M, batch 1, cosine after a 10% warm-up, the
generated maths problems and the Python documentation; docs/training-defaults.md shows the
choice, and a test checks these values against the study's files). FT's rate comes from the
earlier 40-step sweep of the same page. LISA moves only E, H and gamma blocks per period, so it
wants a larger step than full fine-tuning; LoRA starts from a zero update and wants a larger
one still.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_INTERVAL",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_LORA_RANK",
    "DEFAULT_LR_SCHEDULER",
    "DEFAULT_WARMUP_RATIO",
    "default_lora_alpha",
]

#: AdamW learning rate per method ("lisa", "lora", "ft").
DEFAULT_LEARNING_RATES: dict[str, float] = {"lisa": 2e-4, "lora": 1e-3, "ft": 5e-5}

#: The rate schedule of every run unless one is given: a transformers scheduler name.
DEFAULT_LR_SCHEDULER = "cosine"

#: Linear warm-up, as a fraction of the steps, of every schedule that warms up unless a warm-up
#: is given (``"constant"`` takes none).
DEFAULT_WARMUP_RATIO = 0.1

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
