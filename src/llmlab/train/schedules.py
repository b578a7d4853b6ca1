"""Learning-rate schedules, as multipliers of the peak learning rate for `torch.optim.lr_scheduler.LambdaLR`."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Multiplier at step (0-based): linear warmup to 1 over warmup steps, then cosine decay to min_ratio at total."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
