"""Loss-spike handling in the practice of the OPT logbook: skip a step whose loss is not finite or spikes."""

from __future__ import annotations

import math
import statistics
from collections import deque


class SpikeGuard:
    """Flags a loss that is not finite, or above factor × the median of the last window accepted losses."""

    def __init__(self, factor: float | None = None, window: int = 100, min_history: int = 10):
        self.factor = factor
        self.min_history = min(min_history, window)
        self.history: deque[float] = deque(maxlen=window)

    def reason_to_skip(self, loss: float) -> str | None:
        """'non-finite' or 'spike' when the step with this loss should be skipped, else None."""
        if not math.isfinite(loss):
            return "non-finite"
        if self.factor is not None and len(self.history) >= self.min_history:
            if loss > self.factor * statistics.median(self.history):
                return "spike"
        return None

    def accept(self, loss: float) -> None:
        """Record the loss of a step that was taken."""
        self.history.append(loss)

    def state_dict(self) -> dict:
        """The recent losses, for a checkpoint."""
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the recent losses from a checkpoint."""
        self.history.clear()
        self.history.extend(float(loss) for loss in state["history"])
