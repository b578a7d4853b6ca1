"""Turning a stream of token ids into training batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llmlab.errors import DataError


def sample_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator | None = None) -> dict:
    """Draw batch_size windows of seq_len tokens at random offsets of a 1-D token tensor, as `{"input_ids", "labels"}`."""
    if tokens.dim() != 1:
        raise DataError(f"sample_batch needs a 1-D tensor of token ids, got shape {tuple(tokens.shape)}.")
    if tokens.numel() < seq_len:
        raise DataError(f"the token stream has {tokens.numel()} tokens, fewer than seq_len {seq_len}.")
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (batch_size,), generator=generator, device=tokens.device)
    windows = torch.stack([tokens[start : start + seq_len] for start in starts.tolist()])
    return {"input_ids": windows, "labels": windows}


def random_batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> Iterator[dict]:
    """Yield sample_batch draws forever; with a seeded generator the sequence of batches is reproducible."""
    while True:
        yield sample_batch(tokens, batch_size, seq_len, generator)
