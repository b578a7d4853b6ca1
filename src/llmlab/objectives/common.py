"""What every objective shares: checking a batch of token windows, right-padding rows, streaming batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from llmlab.data.packing import sample_batch
from llmlab.errors import ConfigError, DataError

IGNORE_INDEX = -100  # labels at positions without loss, as torch's cross_entropy and Model.forward expect

Objective = Callable[[torch.Tensor, "torch.Generator | None"], dict]


def check_windows(windows: torch.Tensor, objective: str) -> torch.Tensor:
    """Return windows if it is a [batch, seq] integer tensor, else raise DataError naming the objective."""
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise DataError(
            f"{objective} needs a [batch, seq] integer tensor of token ids, got {tuple(windows.shape)} {windows.dtype}."
        )
    return windows.long()


def check_fraction(value: float, name: str) -> float:
    """Return value if it lies in (0, 1), else raise ConfigError naming the field."""
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value}.")
    return value


def pad_rows(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Stack 1-D tensors (or [k, len] tensors) into one, right-padding the last dimension with value."""
    length = max(row.shape[-1] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, length - row.shape[-1]), value=value) for row in rows])


def padding_mask(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """The attention mask (1 = token, 0 = padding) of pad_rows(rows)."""
    length = max(row.shape[-1] for row in rows)
    return torch.stack([(torch.arange(length) < row.shape[-1]).long() for row in rows])


def objective_batches(
    objective: Objective, tokens: torch.Tensor, batch_size: int, seq_len: int,
    generator: torch.Generator | None = None,
) -> Iterator[dict]:
    """Yield objective(windows) forever on random windows of a packed 1-D token stream, reproducible given generator."""
    while True:
        windows = sample_batch(tokens, batch_size, seq_len, generator)["input_ids"]
        yield objective(windows, generator)
