"""Attention (survey §4.2.2): multi-head, grouped-query and multi-query; self and cross; one KV cache.

Every variant goes through torch.nn.functional.scaled_dot_product_attention, so flash and memory-efficient
kernels run on a GPU whenever the mask allows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import ModelConfig


class KVCache:
    """Keys and values of past tokens per layer, plus encoder-decoder cross keys/values computed once."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """How many tokens are cached."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys/values [batch, kv_heads, new, head_dim] and return all of them."""
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in index (e.g. for beam search)."""
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                if tensor is not None:
                    store[layer] = tensor.index_select(0, index)
        self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                      for kv in self.cross]


class Attention(nn.Module):
    """Scaled dot-product attention with separate or fused q/k/v projections and optional rotary positions."""

    def __init__(self, config: ModelConfig, cross: bool = False):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.dim_head
        self.scale = config.attn_scale
        self.dropout = config.dropout
        self.cross = cross
        d, q_width, kv_width = config.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if config.fused_qkv and not cross:
            self.qkv = nn.Linear(d, q_width + 2 * kv_width, bias=config.qkv_bias)
        else:
            self.q = nn.Linear(d, q_width, bias=config.qkv_bias)
            self.k = nn.Linear(d, kv_width, bias=config.qkv_bias)
            self.v = nn.Linear(d, kv_width, bias=config.qkv_bias)
        self.o = nn.Linear(q_width, d, bias=config.out_bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:2], n, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor, memory: torch.Tensor | None = None):
        """Queries, keys and values [batch, heads, seq, head_dim] (keys/values from memory for cross-attention)."""
        if hasattr(self, "qkv"):
            q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
        else:
            source = x if memory is None else memory
            q, k, v = self.q(x), self.k(source), self.v(source)
        return self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope=None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from x [batch, seq, d_model] to itself, or to memory for cross-attention."""
        if self.cross and cache is not None and cache.cross[layer] is not None:
            q = self._heads(self.q(x), self.n_heads)
            k, v = cache.cross[layer]
        else:
            q, k, v = self.project(x, memory)
            if rope is not None:
                rotary, cos, sin = rope
                q, k = rotary.rotate(q, cos, sin), rotary.rotate(k, cos, sin)
            if cache is not None:
                if self.cross:
                    cache.cross[layer] = (k, v)
                else:
                    k, v = cache.append(layer, k, v)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k[:, :, None].expand(-1, -1, repeat, -1, -1).flatten(1, 2)
            v = v[:, :, None].expand(-1, -1, repeat, -1, -1).flatten(1, 2)
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
        )
        return self.o(out.transpose(1, 2).flatten(2))
