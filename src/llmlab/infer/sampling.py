"""Choosing the next token (survey §6): greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from llmlab.errors import ConfigError


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k tokens, or outside the smallest set with probability >= top_p, to -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise ConfigError unless temperature > 0, top_k >= 0 (0: no limit) and top_p lies in (0, 1]."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive for sampling, not {temperature}.")
    if top_k is not None and top_k < 0:
        raise ConfigError(f"top_k must be 0 (no limit) or more, not {top_k}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must lie in (0, 1], not {top_p}.")


def next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token id per row of logits [batch, vocab]: argmax, or a sample from the filtered distribution."""
    if not do_sample:
        return logits.argmax(dim=-1)
    check_sampling(temperature, top_k, top_p)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
