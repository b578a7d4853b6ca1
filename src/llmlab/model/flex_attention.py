"""The FlexAttention backend (torch.nn.attention.flex_attention): the attention description lowered to a block mask
(mask_mod) and the position biases to a score_mod, so no [batch, heads, queries, keys] mask is materialised.

Every part of the description lowers: causality on slots, prefix-LM, sliding windows, document masks and key padding
to mask_mod; ALiBi, T5's relative buckets (shared or per layer) and sums of them to score_mod, through each bias's
elementwise ``score(head, query, key)``. The fused kernel needs torch.compile (compile the model or the step); called
eagerly, torch traces flex_attention itself and runs an unfused version that materialises the scores — correct on
any device but no faster than the dense backend. On CPU flex runs forward only (torch has no CPU backward for it),
and it has no attention dropout on any device. A query that sees no key at all (a padding position) gets a zero
output where the dense backend averages every value; real tokens never see such positions, so outputs agree wherever
a token is real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from llmlab.errors import ConfigError

if TYPE_CHECKING:  # attention.py registers this backend, so it is imported from there
    from llmlab.model.attention import AttentionSpec


def _batch_size(spec: AttentionSpec) -> int:
    """The batch the description's tensors broadcast to (1 when none has a batch dimension above 1)."""
    tensors = (spec.query_index, spec.key_padding, spec.prefix_lengths, spec.document_ids)
    return max(t.shape[0] for t in tensors if t is not None)


def _rows(spec: AttentionSpec):
    """The description's batch size and a function from flex's batch index to its row (0 for every row when 1)."""
    batch = _batch_size(spec)
    return batch, (lambda b: b) if batch > 1 else (lambda b: 0)


def mask_mod_of(spec: AttentionSpec, window: int | None):
    """The description as a mask_mod(b, h, q_idx, kv_idx) -> bool on key slots, or None when every key is visible."""
    if not (spec.causal or window is not None or spec.key_padding is not None or spec.document_ids is not None):
        return None
    batch, row = _rows(spec)
    slots = spec.query_index.expand(batch, -1)
    prefix, padding, documents = spec.prefix_lengths, spec.key_padding, spec.document_ids
    padding = None if padding is None else padding.bool().expand(batch, -1)
    causal = spec.causal

    def mask_mod(b, h, q_idx, kv_idx):
        b = row(b)
        query = slots[b, q_idx]
        allowed = kv_idx >= 0
        if causal:
            visible = kv_idx <= query
            allowed = visible if prefix is None else visible | (kv_idx < prefix.expand(batch)[b])
        if window is not None:
            allowed = allowed & (query - kv_idx < window)
        if padding is not None:
            allowed = allowed & padding[b, kv_idx]
        if documents is not None:
            rows = documents.expand(batch, -1)
            allowed = allowed & (rows[b, query] == rows[b, kv_idx])
        return allowed

    return mask_mod


def score_mod_of(spec: AttentionSpec, biases: tuple):
    """The sum of the position biases as a score_mod(score, b, h, q_idx, kv_idx), or None without biases."""
    if not biases:
        return None
    batch, row = _rows(spec)
    slots = spec.query_index.expand(batch, -1)
    for bias in biases:
        if not hasattr(bias, "score"):
            raise ConfigError(f"The flex attention backend needs an elementwise score() of the position bias "
                              f"{type(bias).__name__}; use the 'sdpa' backend for it.")

    def score_mod(score, b, h, q_idx, kv_idx):
        query = slots[row(b), q_idx]
        for bias in biases:
            score = score + bias.score(h, query, kv_idx).to(score.dtype)
        return score

    return score_mod


class FlexAttention:
    """FlexAttention: one block mask per layer kind and batch, position biases as a score_mod."""

    name = "flex"

    def lower(self, spec: AttentionSpec, window: int | None, biases: tuple, dtype: torch.dtype):
        """(BlockMask or None, score_mod or None); the block mask is built once per batch and window."""
        block_mask = spec.memo(("flex", window), lambda: self._block_mask(spec, window))
        return block_mask, score_mod_of(spec, biases)

    @staticmethod
    def _block_mask(spec: AttentionSpec, window: int | None):
        mask_mod = mask_mod_of(spec, window)
        if mask_mod is None:
            return None
        batch = _batch_size(spec)
        return create_block_mask(mask_mod, batch, None, spec.queries, spec.key_count,
                                 device=spec.query_index.device)

    def attend(self, q, k, v, lowered, scale: float | None, dropout: float) -> torch.Tensor:
        """Attention output [batch, heads, queries, head_dim] for q and (grouped) k, v."""
        if dropout > 0:
            raise ConfigError("The flex attention backend has no attention dropout; train with dropout=0 or "
                              "the 'sdpa' backend.")
        if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            raise ConfigError(f"FlexAttention cannot backpropagate on CPU in torch {torch.__version__}; train on "
                              f"CPU with the 'sdpa' backend (or run under torch.no_grad()).")
        block_mask, score_mod = lowered
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                              enable_gqa=k.shape[1] != q.shape[1])
