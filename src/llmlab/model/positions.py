"""Position schemes (survey §4.2.2): learned, sinusoidal, RoPE, ALiBi, T5 relative buckets, GLM 2-D."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmlab.model.config import ModelConfig


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed sin|cos position table of Vaswani et al. (2017), concatenated as in tensor2tensor."""
    inv_freq = base ** (-torch.arange(0, dim // 2, dtype=torch.float64) / max(dim // 2, 1))
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        table = torch.nn.functional.pad(table, (0, 1))
    return table.float()


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) over the first rotary_dim channels of each head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dim = config.rotary_dim
        self.base = config.rope_base
        self.interleaved = config.rope_layout == "interleaved"

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [batch, 1, seq, rotary_dim] for integer positions [batch, seq], in float32."""
        # computed per call rather than kept as a buffer, so casting the model to bf16 never rounds the frequencies
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float32, device=positions.device) / self.dim
        inv_freq = 1.0 / (self.base ** exponents)
        angles = positions[:, None, :, None].float() * inv_freq
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1)
        else:
            angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Apply the rotation to queries or keys [batch, heads, seq, head_dim]."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        if self.interleaved:
            even, odd = rot[..., 0::2], rot[..., 1::2]
            turned = torch.stack([-odd, even], dim=-1).flatten(-2)
        else:
            first, second = rot.chunk(2, dim=-1)
            turned = torch.cat([-second, first], dim=-1)
        rotated = rot * cos.to(x.dtype) + turned * sin.to(x.dtype)
        return torch.cat([rotated, rest], dim=-1) if rest.shape[-1] else rotated


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022), with the paper's interleaving for non-power-of-2 head counts."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-8.0 / closest)
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest < n_heads:
        extra_base = 2.0 ** (-4.0 / closest)
        slopes += [extra_base ** (2 * i + 1) for i in range(n_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive bias −slope·|i−j| of shape [batch | 1, heads, q, k] for query slots [batch | 1, q], key slots [k]."""
    return AlibiBias(slopes)(q_pos, k_pos)


def _broadcast_indices(n_heads: int, query_index: torch.Tensor, key_index: torch.Tensor):
    """Head [heads, 1, 1], query [batch | 1, 1, q, 1] and key [k] index tensors that broadcast to [batch, heads, q, k]."""
    heads = torch.arange(n_heads, device=query_index.device)[:, None, None]
    return heads, query_index[:, None, :, None], key_index


class AlibiBias:
    """ALiBi's bias for the position-bias protocol of the attention backends."""

    def __init__(self, slopes: torch.Tensor):
        self.slopes = slopes

    def score(self, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """−slope[head]·|query−key| for broadcastable head, query-slot and key-slot index tensors (elementwise)."""
        return -(self.slopes[head] * (query - key).abs().float())

    def __call__(self, query_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Bias [batch | 1, heads, queries, keys]."""
        return self.score(*_broadcast_indices(len(self.slopes), query_index, key_index))


def relative_bucket(relative: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's log-spaced bucket of each key−query offset (Raffel et al. 2020)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets += (relative > 0).long() * n_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = n_buckets // 2
    is_small = relative < max_exact
    scaled = torch.log(relative.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (n_buckets - max_exact)).long()
    large = torch.clamp(large, max=n_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class RelativeBias(nn.Module):
    """T5's learned per-head scalar bias for each relative-position bucket."""

    def __init__(self, config: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets = config.relative_buckets
        self.max_distance = config.relative_max_distance
        self.embedding = nn.Embedding(config.relative_buckets, config.n_heads)

    def score(self, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The learned bias of head for the bucket of key−query, for broadcastable index tensors (elementwise)."""
        bucket = relative_bucket(key - query, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embedding.weight[bucket, head]

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Bias [batch | 1, heads, q, k] for query slots [batch | 1, q] and key slots [k]."""
        return self.score(*_broadcast_indices(self.embedding.embedding_dim, q_pos, k_pos))
