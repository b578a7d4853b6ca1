"""Scoring text under a model (survey §7): the log-likelihood of a continuation after a context, and rolling
log-likelihoods of whole texts for perplexity, as lm-evaluation-harness's loglikelihood and loglikelihood_rolling
requests define them.

Batches are sorted by length and padded on the right, so that padding never reaches a scored position (causal
attention) and a result does not depend on the batch it was computed in. Requests that share a context (the choices
of a multiple-choice question) run the context once into a key/value cache and then only their continuations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError
from llmlab.infer.cache import DynamicCache


@dataclass(frozen=True)
class Loglikelihood:
    """log p(continuation | context), summed over the continuation's tokens, and whether greedy decoding from the
    context would have produced the continuation."""

    logprob: float
    is_greedy: bool
    tokens: int


Request = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


def _fit(context: Sequence[int], continuation: Sequence[int], limit: int, index: int) -> tuple[tuple, tuple]:
    """The request cut from the left so that the model reads at most limit tokens (the last one is only predicted),
    as lm-eval does."""
    if not continuation:
        raise ConfigError(f"Request {index} has an empty continuation; there is nothing to score.")
    if not context:
        raise ConfigError(f"Request {index} has an empty context; begin it with a BOS or end-of-text token.")
    if len(continuation) > limit:
        raise ConfigError(f"Request {index}'s continuation has {len(continuation)} tokens, more than the model's "
                          f"context of {limit}.")
    keep = limit + 1 - len(continuation)
    return tuple(context[-keep:]), tuple(continuation)


def _continuation_scores(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> list[tuple[float, bool]]:
    """(summed log-probability, all greedy) per row of logits [rows, T, vocab] for targets [rows, T] of the lengths."""
    logprobs = logits.float().log_softmax(-1)
    chosen = logprobs.gather(-1, targets[..., None])[..., 0]
    greedy = logprobs.argmax(-1) == targets
    results = []
    for row, length in enumerate(lengths):
        results.append((float(chosen[row, :length].sum()), bool(greedy[row, :length].all())))
    return results


@torch.no_grad()
def loglikelihood(model, requests: Sequence[Request], batch_size: int = 16, progress: bool = False
                  ) -> list[Loglikelihood]:
    """Score each (context, continuation) pair of token ids; the results in the requests' order.

    A decoder reads context + continuation; an encoder-decoder encodes the context and scores the continuation as
    the decoder's output after its start token. Contexts too long for the model are cut from the left."""
    if model.config.arch == "encoder":
        raise ConfigError("An encoder-only model does not give next-token probabilities; score with a decoder.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, not {batch_size!r}.")
    limit = model.config.max_seq_len
    fitted = [_fit(context, continuation, limit, i) for i, (context, continuation) in enumerate(requests)]
    results: list[Loglikelihood | None] = [None] * len(fitted)
    groups: dict[tuple, list[int]] = {}
    for index, (context, _) in enumerate(fitted):
        groups.setdefault(context, []).append(index)
    shared = {context: rows for context, rows in groups.items()
              if len(rows) > 1 and model.config.arch != "encoder_decoder"}
    single = sorted((i for context, rows in groups.items() if context not in shared for i in rows),
                    key=lambda i: -sum(map(len, fitted[i])))  # longest first: a memory error shows at once
    from tqdm.auto import tqdm

    with tqdm(total=len(fitted), disable=not progress, desc="loglikelihood", unit="request") as bar:
        for start in range(0, len(single), batch_size):
            batch = single[start:start + batch_size]
            scores = _score_batch(model, [fitted[i] for i in batch])
            for index, (logprob, greedy) in zip(batch, scores):
                results[index] = Loglikelihood(logprob, greedy, len(fitted[index][1]))
            bar.update(len(batch))
        for context, rows in shared.items():
            for start in range(0, len(rows), batch_size):
                batch = rows[start:start + batch_size]
                scores = _score_shared_context(model, context, [fitted[i][1] for i in batch])
                for index, (logprob, greedy) in zip(batch, scores):
                    results[index] = Loglikelihood(logprob, greedy, len(fitted[index][1]))
                bar.update(len(batch))
    return results


def _right_padded(rows: list[Sequence[int]], device) -> torch.Tensor:
    longest = max(map(len, rows))
    return torch.tensor([list(row) + [0] * (longest - len(row)) for row in rows], dtype=torch.long, device=device)


def _score_batch(model, requests: list[tuple[tuple, tuple]]) -> list[tuple[float, bool]]:
    """One forward for rows of different contexts, padded on the right."""
    device = model.device
    lengths = [len(continuation) for _, continuation in requests]
    if model.config.arch == "encoder_decoder":
        sources = [context for context, _ in requests]
        source = _right_padded(sources, device)
        mask = (torch.arange(source.shape[1], device=device) < torch.tensor([len(s) for s in sources],
                                                                            device=device)[:, None]).long()
        start = model.config.decoder_start_token_id
        start = start if start is not None else (model.config.pad_token_id or 0)
        targets = _right_padded([continuation for _, continuation in requests], device)
        decoder = torch.cat([targets.new_full((len(requests), 1), start), targets[:, :-1]], dim=1)
        logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder).logits
        return _continuation_scores(logits, targets, lengths)
    rows = [context + continuation for context, continuation in requests]
    ids = _right_padded(rows, device)
    inputs = model.prepare(ids[:, :-1], check_ids=True)
    hidden, _ = model.hidden(inputs)
    # each row's continuation is predicted from the positions just before its tokens
    offsets = torch.tensor([len(c) - 1 for c, _ in requests], device=device)[:, None]
    index = offsets + torch.arange(max(lengths), device=device)
    index = index.clamp(max=ids.shape[1] - 2)
    logits = model.logits(hidden, index)
    targets = ids.gather(1, (index + 1).clamp(max=ids.shape[1] - 1))
    return _continuation_scores(logits, targets, lengths)


def _score_shared_context(model, context: tuple, continuations: list[tuple]) -> list[tuple[float, bool]]:
    """The context once into a cache (all but its last token), then every continuation in one batch from there."""
    device = model.device
    layers = model.config.n_layers
    cache = DynamicCache(layers)
    lengths = [len(continuation) for continuation in continuations]
    if len(context) > 1:
        hidden, _ = model.hidden(model.prepare(torch.tensor([context[:-1]], device=device), cache=cache))
        cache.reorder(torch.zeros(len(continuations), dtype=torch.long, device=device))
    rows = [(context[-1],) + continuation for continuation in continuations]
    ids = _right_padded(rows, device)
    hidden, _ = model.hidden(model.prepare(ids[:, :-1], cache=cache))
    logits = model.logits(hidden)
    return _continuation_scores(logits, ids[:, 1:], lengths)


@torch.no_grad()
def loglikelihood_rolling(model, texts: Sequence[Sequence[int]], prefix_token: int, max_length: int | None = None,
                          stride: int | None = None, batch_size: int = 16, progress: bool = False) -> list[float]:
    """The summed log-probability of every token of each text (token ids), as lm-eval's loglikelihood_rolling.

    Each text is read after prefix_token (a BOS or end-of-text token) in windows of max_length tokens (the model's
    context by default); the windows' scored spans tile the text, every token scored once, each after at least
    max_length - stride tokens of context where the text has them (stride = max_length: disjoint windows)."""
    max_length = max_length or model.config.max_seq_len
    stride = stride or max_length
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must lie in 1..max_length ({max_length}), not {stride}.")
    requests, owners = [], []
    for owner, text in enumerate(texts):
        tokens = [prefix_token, *text]
        for end in range(1, len(tokens), stride):
            stop = min(end + stride, len(tokens))
            begin = max(0, stop - max_length - 1)  # the window's first token is context only
            begin = min(begin, end - 1)
            requests.append((tokens[begin:end], tokens[end:stop]))
            owners.append(owner)
    scores = loglikelihood(model, requests, batch_size, progress)
    totals = [0.0] * len(texts)
    for owner, score in zip(owners, scores):
        totals[owner] += score.logprob
    return totals
