"""The one-token decode step over a static cache, eager or under torch.compile (survey §6), as gpt-fast does it.

Every step has the same shapes: one token per row, the cache's full capacity of key slots, the slots and positions
per row as tensors (never Python ints), and the prompt's padding as a fixed [batch, capacity] mask; causality over the
slots hides those not yet written. So the step compiles once for a whole generation (and for later ones of the same
batch size and capacity, which is rounded up to a multiple of 256 slots), and on a GPU runs as a CUDA graph
(mode="reduce-overhead").

    result = generate(model, prompts, cache="static", compile=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.infer.cache import StaticCache, reindex_rows


def _decode_one(model, cache: StaticCache, ids: torch.Tensor, positions: torch.Tensor,
                key_padding: torch.Tensor | None) -> torch.Tensor:
    """Next-token logits [batch, vocab] after one token per row, ids [batch, 1] at positions [batch, 1]."""
    inputs = model.prepare(ids, None, position_ids=positions, cache=cache, check_ids=False)
    if key_padding is not None:  # prepare sees no mask: the prompt's padding joins the causal description here
        inputs.attention = replace(inputs.attention, key_padding=key_padding[:, :inputs.attention.key_count])
    hidden, _ = model.hidden(inputs)
    return model.logits(hidden, -1)


CAPACITY_MULTIPLE = 256  # static caches come in few sizes, so that calls of other lengths reuse the compiled step


def compiled_capacity(model, needed: int) -> int:
    """The static cache's capacity for a compiled step: needed slots rounded up, within the model's context."""
    rounded = -(-needed // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
    return max(needed, min(rounded, model.config.max_seq_len))


def compile_step(device: torch.device, backend: bool | str | Callable = True) -> Callable:
    """_decode_one under torch.compile: inductor (as CUDA graphs on a GPU) for True, else the given backend."""
    if backend is True:
        if device.type == "cuda":
            return torch.compile(_decode_one, mode="reduce-overhead", fullgraph=True, dynamic=False)
        return torch.compile(_decode_one, fullgraph=True, dynamic=False)
    return torch.compile(_decode_one, backend=backend, fullgraph=True, dynamic=False)


class StaticDecoder:
    """Decode steps over a prefilled StaticCache: each call writes one token per row and returns the next logits."""

    def __init__(self, model, cache: StaticCache, attention_mask: torch.Tensor | None,
                 compile: bool | str | Callable = False):
        if model.config.arch not in ("decoder", "prefix_decoder"):
            raise ConfigError(f"A compiled or static decode step needs a decoder-only model, not a "
                              f"{model.config.arch}.")
        self.model, self.cache = model, cache
        device = cache.lengths.device
        if attention_mask is None:
            self.positions = cache.lengths[:, None].clone()
            self.key_padding = None
        else:  # real tokens count from 0 in every row; slots past the prompt hold new tokens only
            self.positions = attention_mask.long().sum(-1, keepdim=True)
            padding = attention_mask.bool()
            self.key_padding = F.pad(padding, (0, cache.capacity - padding.shape[1]), value=True)
        self.compiled = bool(compile) or not isinstance(compile, bool)
        self.step = compile_step(device, compile) if self.compiled else _decode_one
        self.ids = None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] after writing ids [batch, 1] (each row's newest token) at each row's next slot."""
        if self.ids is None:  # one buffer, one layout for every step (a column of the history has its stride)
            self.ids = torch.empty(ids.shape, dtype=ids.dtype, device=ids.device)
            if self.compiled and ids.device.type == "cuda":
                # CUDA graphs replay fixed addresses: the cache and the per-row state are updated in place from here
                for tensor in (*self.cache.keys, *self.cache.values, self.cache.lengths, self.positions,
                               self.key_padding, self.ids):
                    if tensor is not None:
                        torch._dynamo.mark_static_address(tensor)
        self.ids.copy_(ids)
        logits = self.step(self.model, self.cache, self.ids, self.positions, self.key_padding)
        self.positions += 1
        return logits.clone() if self.compiled else logits  # a CUDA graph's output is overwritten by its next replay

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the given rows, in that order (the cache reorders itself), in place when the batch size stays."""
        self.positions = reindex_rows(self.positions, rows)
        if self.key_padding is not None:
            self.key_padding = reindex_rows(self.key_padding, rows)
