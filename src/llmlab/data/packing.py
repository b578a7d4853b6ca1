"""Random windows of an in-memory token stream, for experiments and the objectives' tests (pretraining reads
token shards through llmlab.data.mixture instead)."""

from __future__ import annotations

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
