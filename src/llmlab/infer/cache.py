"""Key/value caches behind the model's Cache protocol (llmlab.model.attention): dynamic, static and ragged (the paged
one, for the engine, is llmlab.infer.paged.PagedCache)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch

from llmlab.errors import CacheFullError, ConfigError


class _CrossAttentionStore:
    """An encoder-decoder's cross-attention keys/values per layer, computed once from the encoder output."""

    def __init__(self, n_layers: int):
        self._cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's cross-attention keys/values, once computed."""
        return self._cross[layer]

    def set_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the layer's cross-attention keys/values."""
        self._cross[layer] = (keys, values)

    def _reorder_cross(self, index: torch.Tensor) -> None:
        self._cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                       for kv in self._cross]


class DynamicCache(_CrossAttentionStore):
    """Keys and values that grow by concatenation, one length for the whole batch (the simplest cache)."""

    contiguous = True  # attention sees exactly the written keys, the newest last

    def __init__(self, n_layers: int):
        super().__init__(n_layers)
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def slots(self, new_tokens: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Slots length..length+new_tokens-1 for every row; attention then sees length + new_tokens keys."""
        return torch.arange(self.length, self.length + new_tokens, device=device)[None], self.length + new_tokens

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values [batch, kv_heads, new, head_dim] and return all of the layer's."""
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def advance(self, new_tokens: int) -> None:
        """Count the tokens every layer has appended."""
        self.length += new_tokens

    def truncate(self, length: int) -> None:
        """Forget every key and value after the first length (rejected draft tokens of speculative decoding)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"DynamicCache.truncate({length}) outside the {self.length} cached tokens.")
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                if tensor is not None:
                    store[layer] = tensor[:, :, :length]
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in index, in that order (beam search, finished rows)."""
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                if tensor is not None:
                    store[layer] = tensor.index_select(0, index)
        self._reorder_cross(index)


class StaticCache(_CrossAttentionStore):
    """Preallocated keys and values [batch, kv_heads, capacity, head_dim] per layer, written by slot, with a length of
    its own per row. Attention sees the slots up to the longest row's, or with fixed_shapes all capacity slots every
    step (the fixed shapes torch.compile and CUDA graphs replay)."""

    contiguous = False

    def __init__(self, n_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 fixed_shapes: bool = False):
        super().__init__(n_layers)
        self.fixed_shapes = fixed_shapes
        self._key_count = capacity  # the slots attention sees in this step
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.capacity = capacity

    @classmethod
    def for_model(cls, model, batch: int, capacity: int, dtype: torch.dtype | None = None,
                  fixed_shapes: bool = False) -> "StaticCache":
        """A cache sized for model's decoder layers and attention heads."""
        config = model.config
        layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
        if capacity > config.max_seq_len and config.position in ("learned", "sinusoidal", "glm2d"):
            raise ConfigError(f"A cache of {capacity} positions exceeds the model's max_seq_len {config.max_seq_len}.")
        dtype = dtype or next(model.parameters()).dtype
        return cls(layers, batch, config.kv_heads, config.dim_head, capacity, dtype, model.device, fixed_shapes)

    def slots(self, new_tokens: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Each row's next new_tokens slots (its own length on); attention sees the slots up to the longest row's end
        after them (all capacity slots with fixed_shapes), a shorter row's later ones masked causally."""
        self._key_count = self.capacity if self.fixed_shapes else int(self.lengths.max()) + new_tokens
        return self.lengths[:, None] + torch.arange(new_tokens, device=device), self._key_count

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write keys/values [batch, kv_heads, new, head_dim] at slots positions [batch, new]; return the buffers'
        slots attention sees."""
        index = positions[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        self.keys[layer].scatter_(2, index, keys.to(self.keys[layer].dtype))
        self.values[layer].scatter_(2, index, values.to(self.values[layer].dtype))
        if self._key_count == self.capacity:
            return self.keys[layer], self.values[layer]
        return self.keys[layer][:, :, :self._key_count], self.values[layer][:, :, :self._key_count]

    def advance(self, new_tokens: int) -> None:
        """Every row has written new_tokens more slots."""
        self.lengths += new_tokens

    def truncate(self, length: int | torch.Tensor) -> None:
        """Shorten each row to length (an int, or one per row [batch]) when it holds more; the stale slots after it
        are overwritten by later writes, and till then lie after every new query, so causal attention hides them."""
        self.lengths = torch.minimum(self.lengths, torch.as_tensor(length, device=self.lengths.device))

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in index, in that order (n samples of one prefill, beams); in place when the batch
        size stays, so that the buffers keep their addresses for CUDA graphs."""
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                store[layer] = reindex_rows(tensor, index)
        self.lengths = reindex_rows(self.lengths, index)
        self._reorder_cross(index)


class RaggedCache(_CrossAttentionStore):
    """Each row's keys and values in a region of its own, as long as that row needs (its prompt without padding and
    its new tokens): per layer one buffer [kv_heads, every row's slots, head_dim], the rows back to back, so that a
    batch of prompts of mixed lengths stores no padding. Attention gets one view per row of exactly the slots it has
    written (lists, which the sdpa backend attends to row by row; one strided tensor when the rows are as long as each
    other); select() picks the rows of the next forward call, e.g. one prompt at a time for a prefill without
    padding."""

    contiguous = True  # every row sees exactly its written keys, the newest last
    per_row = True  # update() may return lists of per-row keys/values

    def __init__(self, n_layers: int, capacities: Sequence[int], kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(n_layers)
        self.capacities = [int(c) for c in capacities]
        self.offsets = [0, *accumulate(self.capacities)][:-1]
        shape = (kv_heads, sum(self.capacities), head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # read only once written
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.row_lengths = [0] * len(self.capacities)  # Python ints: the per-row views cost no device sync
        self.rows = list(range(len(self.capacities)))
        self._step: tuple | None = None  # (write index [rows × new], each row's (offset, end) after it, uniform)

    @classmethod
    def for_model(cls, model, capacities: Sequence[int], dtype: torch.dtype | None = None) -> "RaggedCache":
        """A cache with one region of capacities[i] slots for row i, sized for model's decoder layers and heads."""
        config = model.config
        layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
        dtype = dtype or next(model.parameters()).dtype
        return cls(layers, capacities, config.kv_heads, config.dim_head, dtype, model.device)

    def select(self, rows: Sequence[int] | None = None) -> None:
        """Make rows (every row by default) the rows of the next forward calls, in this order."""
        self.rows = list(range(len(self.capacities))) if rows is None else [int(r) for r in rows]

    def _lengths_with_room(self, new_tokens: int) -> list[int]:
        """Each selected row's written length, once checked that new_tokens more fit in its region."""
        lengths = [self.row_lengths[r] for r in self.rows]
        for row, length in zip(self.rows, lengths):
            if length + new_tokens > self.capacities[row]:
                raise CacheFullError(f"Row {row} of the ragged cache holds {self.capacities[row]} slots; "
                                     f"{length} are written and {new_tokens} more do not fit.")
        return lengths

    def slots(self, new_tokens: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """Each selected row's next new_tokens slots (its own length on); attention then sees the longest row's."""
        lengths = self._lengths_with_room(new_tokens)
        starts = [self.offsets[r] + n for r, n in zip(self.rows, lengths)]
        index = (torch.tensor(starts)[:, None] + torch.arange(new_tokens)).flatten().to(device)
        capacity = self.capacities[self.rows[0]]
        uniform = len(self.rows) > 1 and len(set(lengths)) == 1 and all(  # consecutive regions of one size
            self.capacities[r] == capacity and self.offsets[r] == self.offsets[self.rows[0]] + i * capacity
            for i, r in enumerate(self.rows))
        self._step = (index, [(self.offsets[r], n + new_tokens) for r, n in zip(self.rows, lengths)], uniform)
        return torch.tensor(lengths, device=device)[:, None] + torch.arange(new_tokens, device=device), \
            max(lengths) + new_tokens

    def one_token_plan(self) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """For one new token per selected row, as Python ints: each row's position (how many slots it has written),
        the buffer slot the token goes to, and the row's region (start, length) once it is written."""
        lengths = self._lengths_with_room(1)
        starts = [self.offsets[r] for r in self.rows]
        return lengths, [start + n for start, n in zip(starts, lengths)], [(s, n + 1) for s, n in zip(starts, lengths)]

    def update(self, layer: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
        """Write keys/values [rows, kv_heads, new, head_dim] at the slots slots() gave; return per row its keys and
        values [1, kv_heads, written, head_dim] (views of the buffers), or, when every row has written as many in
        regions of one size, one view [rows, kv_heads, written, head_dim] of them all."""
        index, spans, uniform = self._step
        heads, dim = keys.shape[1], keys.shape[3]
        stored = []
        for buffer, new in ((self.keys[layer], keys), (self.values[layer], values)):
            buffer.index_copy_(1, index, new.transpose(0, 1).reshape(heads, -1, dim).to(buffer.dtype))
            if uniform:  # every row as long as the others in regions of one size: one strided [rows, ...] view
                rows, capacity = len(spans), self.capacities[self.rows[0]]
                start, length = spans[0]
                region = buffer[:, start:start + rows * capacity].view(heads, rows, capacity, dim)
                stored.append(region.transpose(0, 1)[:, :, :length])
            else:
                stored.append([buffer[None, :, start:start + length] for start, length in spans])
        return stored[0], stored[1]

    def advance(self, new_tokens: int) -> None:
        """Every selected row has written new_tokens more slots."""
        for row in self.rows:
            self.row_lengths[row] += new_tokens
        self._step = None

    def truncate(self, length: int | torch.Tensor) -> None:
        """Shorten each row to length (an int, or one per row [batch]) when it holds more (rejected draft tokens)."""
        limits = torch.as_tensor(length).expand(len(self.capacities)).tolist()
        self.row_lengths = [min(n, int(limit)) for n, limit in zip(self.row_lengths, limits)]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows in index, in that order, repeated as often as they appear (n samples of one prefill, beams):
        their regions are copied into new buffers, one copy as in the dynamic cache's reorder."""
        rows = index.tolist()
        regions = torch.cat([torch.arange(self.offsets[r], self.offsets[r] + self.capacities[r]) for r in rows])
        regions = regions.to(self.keys[0].device)
        for store in (self.keys, self.values):
            for layer, tensor in enumerate(store):
                store[layer] = tensor.index_select(1, regions)
        self.capacities = [self.capacities[r] for r in rows]
        self.offsets = [0, *accumulate(self.capacities)][:-1]
        self.row_lengths = [self.row_lengths[r] for r in rows]
        self.select()
        self._reorder_cross(index)


def reindex_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor's rows in index's order: written into tensor itself when the row count stays."""
    rows = tensor.index_select(0, index)
    return tensor.copy_(rows) if rows.shape == tensor.shape else rows
