"""Rounding and AdamW bounds the float tolerances of the tests are derived from.

docs/design.md section 8 says how they are used: a comparison between two code paths allows
what these bounds allow and no more, and the derivation sits next to each constant.
"""

from __future__ import annotations

import math

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff


def adam_ratio_bound(steps: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """Largest |m_hat| / sqrt(v_hat) of Adam over its first ``steps`` steps, whatever the grads.

    By Cauchy-Schwarz, |sum_i b1^(t-i) g_i| <= sqrt(sum_i (b1^2 / b2)^(t-i)) sqrt(sum_i b2^(t-i) g_i^2),
    so with the bias corrections the ratio is at most
    sqrt(1 - b2^t) / (1 - b1^t) * (1 - b1) / sqrt(1 - b2) * sqrt(sum_{j<t} (b1^2 / b2)^j):
    1 at the first step, 1.016 by the sixth. AdamW's step is lr times this ratio (eps only
    shrinks it), so one step moves an element by at most lr * adam_ratio_bound.

    Example:
        >>> round(adam_ratio_bound(6), 3)
        1.016
    """
    beta1, beta2 = betas
    largest = 0.0
    for t in range(1, steps + 1):
        ratio_sum = sum((beta1 * beta1 / beta2) ** j for j in range(t))
        bound = (
            math.sqrt(1 - beta2**t) / (1 - beta1**t) * (1 - beta1) / math.sqrt(1 - beta2)
            * math.sqrt(ratio_sum)
        )  # fmt: skip
        largest = max(largest, bound)
    return largest
