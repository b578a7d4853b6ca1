"""Causal and prefix language modelling (survey §4.2.3): next-token prediction, over all tokens or the suffix only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError
from llmlab.objectives.common import IGNORE_INDEX, check_fraction, check_windows


def causal_lm(windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
    """Causal LM: every token is a target (Model.forward shifts labels inside, so labels equal the inputs)."""
    windows = check_windows(windows, "causal_lm")
    return {"input_ids": windows, "labels": windows.clone()}


@dataclass(frozen=True)
class PrefixLM:
    """Prefix LM: the first P tokens are attended bidirectionally and carry no loss; the suffix is predicted.

    With prefix_length set, every row splits there; otherwise P is drawn uniformly from [1, seq - 1] per row.
    """

    prefix_length: int | None = None

    def __call__(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Return input_ids, labels (-100 on the prefix) and prefix_lengths [batch] for Model.forward."""
        windows = check_windows(windows, "PrefixLM")
        batch, length = windows.shape
        if self.prefix_length is not None:
            if not 0 < self.prefix_length < length:
                raise ConfigError(f"PrefixLM.prefix_length must lie in [1, {length - 1}] for windows of {length} "
                                  f"tokens, got {self.prefix_length}.")
            prefix_lengths = torch.full((batch,), self.prefix_length)
        else:
            prefix_lengths = torch.randint(1, length, (batch,), generator=generator)
        labels = windows.masked_fill(torch.arange(length)[None, :] < prefix_lengths[:, None], IGNORE_INDEX)
        return {"input_ids": windows, "labels": labels, "prefix_lengths": prefix_lengths}


def prefix_split(length: int, target_fraction: float) -> int:
    """The prefix length that leaves round(length · target_fraction) tokens (at least one) as the target."""
    check_fraction(target_fraction, "target_fraction")
    return length - min(max(round(length * target_fraction), 1), length - 1)
