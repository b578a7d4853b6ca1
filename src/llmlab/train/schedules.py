"""Learning-rate schedules, as multipliers of the peak learning rate for `torch.optim.lr_scheduler.LambdaLR`.

Each starts with a linear warmup over `warmup` steps (0-based step s gets (s + 1) / warmup), then follows its
own shape down to `min_ratio` at step `total`.
"""

from __future__ import annotations

import math


def _progress(step: int, start: int, total: int) -> float:
    return min(1.0, (step - start) / max(1, total - start))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1, **_) -> float:
    """Linear warmup, then cosine decay to min_ratio at total."""
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, total)))


def warmup_linear(step: int, warmup: int, total: int, min_ratio: float = 0.1, **_) -> float:
    """Linear warmup, then linear decay to min_ratio at total."""
    if step < warmup:
        return (step + 1) / warmup
    return 1.0 - (1.0 - min_ratio) * _progress(step, warmup, total)


def warmup_stable_decay(step: int, warmup: int, total: int, min_ratio: float = 0.1, decay_fraction: float = 0.2,
                        **_) -> float:
    """WSD: linear warmup, a constant plateau, then linear decay to min_ratio over the last decay_fraction of total."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = total - max(1, round(decay_fraction * total))
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - min_ratio) * _progress(step, decay_start, total)


def warmup_constant(step: int, warmup: int, total: int, **_) -> float:
    """Linear warmup, then the peak learning rate to the end."""
    return (step + 1) / warmup if step < warmup else 1.0


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "wsd": warmup_stable_decay, "constant": warmup_constant}
