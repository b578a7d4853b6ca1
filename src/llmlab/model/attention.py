"""Attention (survey §4.2.2): multi-head, grouped-query and multi-query; self and cross; the attention description
that one preparation step builds per batch, the backends that lower it, and the cache protocol.

A batch's masking is described once (`AttentionSpec`: causal, prefix lengths, window, document ids, key padding)
rather than materialised; each backend lowers the description its own way, once per layer kind. The dense backend
goes through torch.nn.functional.scaled_dot_product_attention, so flash and memory-efficient kernels run on a GPU
whenever the mask allows; the flex one (llmlab.model.flex_attention) through FlexAttention's block masks and score_mod.
Model.set_attention_backend picks one by name ("sdpa", "flex" or "auto").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.flex_attention import FlexAttention


class Cache(Protocol):
    """Keys and values of past tokens per layer; the implementations (dynamic, static, paged) live in llmlab.infer."""

    def slots(self, new_tokens: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """The key slot [batch | 1, new_tokens] each new token is written to, and how many keys attention then sees."""

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values [batch, kv_heads, new, head_dim] at slots positions; return all keys/values to attend to:
        [batch, kv_heads, key_count, head_dim], or (a cache with per_row set, whose rows may differ in length) lists
        of one [1, kv_heads, keys, head_dim] per row, each exactly that row's keys (slots 0..keys-1)."""

    def advance(self, new_tokens: int) -> None:
        """Mark the new tokens written in every layer (after the last layer's update)."""

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """An encoder-decoder's cross-attention keys/values of a layer, once computed."""

    def set_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a layer's cross-attention keys/values for the following steps."""


@dataclass(frozen=True)
class AttentionSpec:
    """Which keys each query of a batch may see: described once by the model's preparation step, lowered by a backend.

    Keys are the slots 0..key_count-1 (past tokens in a cache, then this step's); query_index is each query's slot.
    """

    query_index: torch.Tensor  # [batch | 1, queries]
    key_count: int
    causal: bool = False
    key_padding: torch.Tensor | None = None  # [batch, key_count] bool: True where the key is a real token
    prefix_lengths: torch.Tensor | None = None  # [batch]: a causal query sees every key before it (prefix LM)
    document_ids: torch.Tensor | None = None  # [batch, key_count]: a query sees its own document's keys only
    plain_causal: bool = False  # exactly the lower triangle over key_count queries: SDPA's is_causal fast path
    lowerings: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key, build: Callable[[], object]):
        """What build() returns, built once per key for this batch (a backend's lowering of one layer kind)."""
        if key not in self.lowerings:
            self.lowerings[key] = build()
        return self.lowerings[key]

    @property
    def queries(self) -> int:
        """How many queries the batch has per row."""
        return self.query_index.shape[-1]

    def allowed(self, window: int | None = None) -> torch.Tensor | None:
        """Boolean [batch | 1, 1, queries, keys] of the visible keys, or None when every key is visible."""
        keys = torch.arange(self.key_count, device=self.query_index.device)
        query = self.query_index[..., None]
        allowed = None

        def both(mask: torch.Tensor) -> torch.Tensor:
            return mask if allowed is None else allowed & mask

        if self.causal:
            allowed = keys <= query
            if self.prefix_lengths is not None:
                allowed = allowed | (keys < self.prefix_lengths[:, None, None])
        if window is not None:
            allowed = both((query - keys) < window)
        if self.key_padding is not None:
            allowed = both(self.key_padding.bool()[:, None, :])
        if self.document_ids is not None:
            query_documents = self.document_ids.gather(1, self.query_index.expand(self.document_ids.shape[0], -1))
            allowed = both(query_documents[..., None] == self.document_ids[:, None, :])
        return None if allowed is None else allowed[:, None]

    def windowed(self, window: int | None) -> "AttentionSpec":
        """This description for a layer with a sliding window (plain causality no longer covers it)."""
        return self if window is None else replace(self, plain_causal=False)


def cross_attention_spec(memory_padding: torch.Tensor | None, queries: int, keys: int,
                         device: torch.device) -> AttentionSpec:
    """Decoder queries over every encoder position that is not padding."""
    index = torch.zeros(1, queries, dtype=torch.long, device=device)
    return AttentionSpec(query_index=index, key_count=keys, key_padding=memory_padding)


class PositionBias(Protocol):
    """An additive per-head score bias from query and key slots (ALiBi, T5's relative buckets)."""

    def __call__(self, query_index: torch.Tensor, key_index: torch.Tensor) -> torch.Tensor:
        """Bias [batch | 1, heads, queries, keys] for query slots [batch | 1, queries] and key slots [keys]."""

    def score(self, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """The same bias elementwise for broadcastable head, query-slot and key-slot tensors (FlexAttention's form)."""


class DenseAttention:
    """The reference backend: one additive mask per layer kind, through scaled_dot_product_attention."""

    name = "sdpa"
    per_row = True  # attends to per-row lists of keys/values, row by row

    def lower(self, spec: AttentionSpec, window: int | None, biases: tuple, dtype: torch.dtype):
        """(additive mask [batch | 1, heads | 1, queries, keys] or None, whether SDPA's is_causal applies)."""
        spec = spec.windowed(window)
        if spec.plain_causal and not biases:
            return None, True
        allowed = spec.allowed(window)
        keys = torch.arange(spec.key_count, device=spec.query_index.device)
        mask = None
        for bias in biases:
            term = bias(spec.query_index, keys)
            mask = term if mask is None else mask + term
        if allowed is not None:
            blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            blocked = blocked.masked_fill(~allowed, torch.finfo(dtype).min)
            mask = blocked if mask is None else blocked + mask
        return (None if mask is None else mask.to(dtype)), False

    def attend(self, q, k, v, lowered, scale: float | None, dropout: float) -> torch.Tensor:
        """Attention output [batch, heads, queries, head_dim] for q and (grouped) k, v."""
        mask, is_causal = lowered
        if isinstance(k, list):  # rows of their own lengths: each attends to its own keys, the mask's first columns
            rows = [self.attend(q[row:row + 1], k[row], v[row], (_mask_row(mask, row, k[row].shape[2]), is_causal),
                                scale, dropout) for row in range(len(k))]
            return rows[0] if len(rows) == 1 else torch.cat(rows)
        if mask is not None:
            mask = mask.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout,
                                              scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _mask_row(mask: torch.Tensor | None, row: int, keys: int) -> torch.Tensor | None:
    """One row's additive mask [1, heads | 1, queries, keys] of a mask [batch | 1, heads | 1, queries, ≥ keys]."""
    if mask is None:
        return None
    return mask[row:row + 1, ..., :keys] if mask.shape[0] > 1 else mask[..., :keys]


BACKENDS = {backend.name: backend for backend in (DenseAttention(), FlexAttention())}
AUTO = "auto"  # flex on CUDA unless attention dropout is active, else sdpa: chosen per call by resolve_backend


def register_backend(backend) -> None:
    """Make an attention backend (an object with name, lower and attend, like DenseAttention's) selectable by name;
    one with per_row set also attends to caches whose rows have keys of their own lengths."""
    BACKENDS[backend.name] = backend


def check_backend(name: str) -> str:
    """The backend name itself, or a ConfigError naming the known ones."""
    if name != AUTO and name not in BACKENDS:
        raise ConfigError(f"There is no attention backend named {name!r}; choose one of "
                          f"{', '.join([*BACKENDS, AUTO])}.")
    return name


def resolve_backend(name: str, device: torch.device, dropout: bool, cache: Cache | None = None):
    """The backend instance for a name; "auto" is flex on CUDA without attention dropout, sdpa otherwise, and sdpa
    for a cache whose rows have keys of their own lengths (per_row) unless the named backend takes those too."""
    if getattr(cache, "per_row", False):
        return BACKENDS[name] if getattr(BACKENDS.get(name), "per_row", False) else BACKENDS["sdpa"]
    if check_backend(name) == AUTO:
        name = "flex" if device.type == "cuda" and not dropout else "sdpa"
    return BACKENDS[name]


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

    def forward(self, x: torch.Tensor, lowered, backend, rope=None, cache: Cache | None = None, layer: int = 0,
                slots: torch.Tensor | None = None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from x [batch, seq, d_model] to itself (writing to cache at slots), or to memory for cross-attention."""
        cached = cache.cross(layer) if self.cross and cache is not None else None
        if cached is not None:
            q = self._heads(self.q(x), self.n_heads)
            k, v = cached
        else:
            q, k, v = self.project(x, memory)
            if rope is not None:
                rotary, cos, sin = rope
                q, k = rotary.rotate(q, cos, sin), rotary.rotate(k, cos, sin)
            if cache is not None:
                if self.cross:
                    cache.set_cross(layer, k, v)
                else:
                    k, v = cache.update(layer, slots, k, v)
        out = backend.attend(q, k, v, lowered, self.scale, self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).flatten(2))
