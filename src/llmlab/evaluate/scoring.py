"""Scoring text under a model (survey §7): the log-likelihood of a continuation after a context, and rolling
log-likelihoods of whole texts for perplexity, as lm-evaluation-harness's loglikelihood and loglikelihood_rolling
requests define them.

Batches are sorted by length and padded on the right, so that padding never reaches a scored position (causal
attention) and a result does not depend on the batch it was computed in. Requests that share a context (the choices
of a multiple-choice question) run the context once into a key/value cache and then only their continuations; the
prefix every such context shares (an instruction, fixed few-shot demonstrations) runs once for all of them. The head
and the float32 log-softmax see only the positions that predict a continuation token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError
from llmlab.infer.cache import DynamicCache

HEAD_CHUNK = 1 << 24  # logits computed at most this many (rows × vocab) at a time: 64 MiB of float32
CPU_HEAD_CHUNK = 1 << 21  # on the CPU 8 MiB, so that a chunk's logits stay in cache for the log-softmax
GAPLESS_POSITIONS = ("rope", "learned", "sinusoidal", "none")  # explicit positions: a padding gap changes nothing


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


def loglikelihood(model, requests: Sequence[Request], batch_size: int = 16, progress: bool = False,
                  max_length: int | None = None) -> list[Loglikelihood]:
    """Score each (context, continuation) pair of token ids; the results in the requests' order.

    A decoder reads context + continuation (a prefix decoder the context bidirectionally, as its prefix); an
    encoder-decoder encodes the context and scores the continuation as the decoder's output after its start token.
    Contexts too long for the model (max_length tokens, its context by default) are cut from the left. One forward
    pass reads (and caches) at most batch_size × max_length tokens: as many as batch_size requests of the longest
    kind, more of shorter ones."""
    return _loglikelihood(model, requests, batch_size, progress, max_length, greedy=True)


@torch.inference_mode()
def _loglikelihood(model, requests: Sequence[Request], batch_size: int, progress: bool, max_length: int | None,
                   greedy: bool) -> list[Loglikelihood]:
    """loglikelihood; with greedy False, is_greedy is not computed (and False)."""
    if model.config.arch == "encoder":
        raise ConfigError("An encoder-only model does not give next-token probabilities; score with a decoder.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, not {batch_size!r}.")
    limit = max_length or model.config.max_seq_len
    budget = batch_size * limit
    fitted = [_fit(context, continuation, limit, i) for i, (context, continuation) in enumerate(requests)]
    results: list[Loglikelihood | None] = [None] * len(fitted)
    groups: dict[tuple, list[int]] = {}
    for index, (context, _) in enumerate(fitted):
        groups.setdefault(context, []).append(index)
    # a context of one token leaves nothing to cache; an encoder-decoder's context is the encoder's input, a prefix
    # decoder's is read whole as its bidirectional prefix
    shared = [rows for context, rows in groups.items()
              if len(rows) > 1 and len(context) > 1 and model.config.arch == "decoder"]
    in_shared = {i for rows in shared for i in rows}
    single = sorted((i for i in range(len(fitted)) if i not in in_shared),
                    key=lambda i: -sum(map(len, fitted[i])))  # longest first: a memory error shows at once
    from tqdm.auto import tqdm

    with tqdm(total=len(fitted), disable=not progress, desc="loglikelihood", unit="request") as bar:
        def record(batch: list[int], scores: list[tuple[float, bool]]) -> None:
            for index, (logprob, is_greedy) in zip(batch, scores, strict=True):
                results[index] = Loglikelihood(logprob, is_greedy, len(fitted[index][1]))
            bar.update(len(batch))

        for batch in _batched(single, lambda i: 1, lambda i: sum(map(len, fitted[i])) - 1, budget):
            record(batch, _score_batch(model, [fitted[i] for i in batch], greedy))
        if shared:
            _score_shared_contexts(model, fitted, shared, budget, record, greedy)
    return results


def _batched(items: list, rows, width, budget: int, alone: bool = False):
    """Consecutive batches of items whose rows times the widest row's tokens read stay within budget (one item at
    least; every item alone if alone)."""
    batch, count, widest = [], 0, 0
    for item in items:
        if batch and (alone or (count + rows(item)) * max(widest, width(item)) > budget):
            yield batch
            batch, count, widest = [], 0, 0
        batch.append(item)
        count, widest = count + rows(item), max(widest, width(item))
    if batch:
        yield batch


def _right_padded(rows: list[Sequence[int]], device) -> torch.Tensor:
    longest = max(map(len, rows))
    return torch.tensor([list(row) + [0] * (longest - len(row)) for row in rows], dtype=torch.long, device=device)


def _lengths_mask(lengths: list[int], width: int, device) -> torch.Tensor:
    """[rows, width] 1 where a position is below its row's length."""
    return (torch.arange(width, device=device) < torch.tensor(lengths, device=device)[:, None]).long()


def _scores(model, hidden: torch.Tensor, targets: torch.Tensor, offsets: list[int], lengths: list[int],
            greedy: bool = True) -> list[tuple[float, bool]]:
    """(summed log-probability, all greedy) per row: hidden[r, p] predicts targets[r, p] for p = offsets[r] + j,
    j < lengths[r]; the head runs on those positions only, a chunk at a time (greedy False: all False, not
    computed)."""
    device = hidden.device
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    steps = torch.cat([torch.arange(length, device=device) for length in lengths])
    positions = steps + torch.tensor(offsets, device=device).repeat_interleave(torch.tensor(lengths, device=device))
    states, wanted = hidden[rows, positions], targets[rows, positions]
    chosen, hits = [], []
    step = max(1, (CPU_HEAD_CHUNK if device.type == "cpu" else HEAD_CHUNK) // model.config.vocab_size)
    for start in range(0, len(rows), step):
        logprobs = model.logits(states[None, start:start + step])[0].float().log_softmax(-1)
        target = wanted[start:start + step, None]
        chosen.append(logprobs.gather(-1, target)[:, 0])
        if greedy:
            hits.append(logprobs.argmax(-1) == target[:, 0])
    totals = torch.zeros(len(lengths), dtype=torch.float64, device=device)
    totals = totals.index_add_(0, rows, torch.cat(chosen).double()).tolist()
    if not greedy:
        return [(total, False) for total in totals]
    misses = torch.zeros(len(lengths), dtype=torch.long, device=device).index_add_(0, rows, (~torch.cat(hits)).long())
    return [(total, miss == 0) for total, miss in zip(totals, misses.tolist())]


def _score_batch(model, requests: list[tuple[tuple, tuple]], greedy: bool) -> list[tuple[float, bool]]:
    """One forward for rows of different contexts, padded on the right."""
    device = model.device
    lengths = [len(continuation) for _, continuation in requests]
    if model.config.arch == "encoder_decoder":
        sources = [context for context, _ in requests]
        mask = _lengths_mask([len(s) for s in sources], max(map(len, sources)), device)
        memory, _ = model.encode(_right_padded(sources, device), mask)
        start = model.config.decoder_start_token_id
        start = start if start is not None else (model.config.pad_token_id or 0)
        targets = _right_padded([continuation for _, continuation in requests], device)
        decoder = torch.cat([targets.new_full((len(requests), 1), start), targets[:, :-1]], dim=1)
        hidden, _ = model.hidden(model.prepare(decoder, check_ids=True), memory, mask)
        return _scores(model, hidden, targets, [0] * len(requests), lengths, greedy)
    ids = _right_padded([context + continuation for context, continuation in requests], device)
    prefix = None
    if model.config.arch == "prefix_decoder":  # the context is the prefix, as prefix-LM training and generate have it
        prefix = torch.tensor([len(context) for context, _ in requests], device=device)
    hidden, _ = model.hidden(model.prepare(ids[:, :-1], prefix_lengths=prefix, check_ids=True))
    # each row's continuation is predicted from the positions just before its tokens
    offsets = [len(context) - 1 for context, _ in requests]
    return _scores(model, hidden, ids[:, 1:], offsets, lengths, greedy)


def _score_shared_contexts(model, fitted: list[tuple[tuple, tuple]], groups: list[list[int]], budget: int, record,
                           greedy: bool) -> None:
    """Every group's context once into a cache (all but its last token), after the prefix all the groups share (run
    once), then all its continuations from there; groups are batched by context length where the model's positions
    allow a padding gap between a context and its continuations (else one group a batch)."""
    device, layers = model.device, model.config.n_layers
    units = []  # (context, rows): a group, or a part of one within the budget
    for rows in groups:
        context = fitted[rows[0]][0]
        per_batch = max(1, budget // (len(context) - 1 + max(len(fitted[i][1]) for i in rows)))
        units += [(context, rows[start:start + per_batch]) for start in range(0, len(rows), per_batch)]
    prefix = os.path.commonprefix([context[:-1] for context, _ in units])
    base = DynamicCache(layers)
    if prefix:
        model.hidden(model.prepare(torch.tensor([prefix], device=device), cache=base, check_ids=True))
    gapless = model.config.position in GAPLESS_POSITIONS and model.config.attn_window is None

    def width(unit):  # the tokens a row reads: the context and the continuation but its last token
        return len(unit[0]) - 1 + max(len(fitted[i][1]) for i in unit[1])

    units.sort(key=lambda unit: (-len(unit[0]), -width(unit)))
    for batch in _batched(units, lambda unit: len(unit[1]), width, budget, alone=not gapless):
        record(*_score_units(model, fitted, batch, base, len(prefix), greedy))


def _score_units(model, fitted, units: list[tuple[tuple, list[int]]], base: DynamicCache, prefix: int,
                 greedy: bool) -> tuple[list[int], list[tuple[float, bool]]]:
    """The units' contexts after the cached prefix (right-padded), then each unit's continuations (the context's last
    token first) over its context's keys alone."""
    device = model.device
    cache = DynamicCache(model.config.n_layers)
    if base.length:
        cache.keys = [k.expand(len(units), -1, -1, -1) for k in base.keys]
        cache.values = [v.expand(len(units), -1, -1, -1) for v in base.values]
        cache.length = base.length
    rests = [context[prefix:-1] for context, _ in units]
    if max(map(len, rests)):
        model.hidden(model.prepare(_right_padded(rests, device), cache=cache, check_ids=True))
    indices = [i for _, rows in units for i in rows]
    owners = [u for u, (_, rows) in enumerate(units) for _ in rows]
    cached = cache.length
    if cached:  # each unit's keys and values once per continuation
        rows = torch.tensor(owners, device=device)
        # indexing, not DynamicCache.reorder's index_select: that is ~40x slower on the CPU for these shapes
        cache.keys, cache.values = [k[rows] for k in cache.keys], [v[rows] for v in cache.values]
    ids = _right_padded([(units[u][0][-1],) + fitted[i][1] for u, i in zip(owners, indices)], device)
    lengths = [len(fitted[i][1]) for i in indices]
    mask = torch.cat([_lengths_mask([len(units[u][0]) - 1 for u in owners], cached, device),
                      _lengths_mask(lengths, ids.shape[1] - 1, device)], dim=1)
    hidden, _ = model.hidden(model.prepare(ids[:, :-1], attention_mask=mask, cache=cache, check_ids=True))
    return indices, _scores(model, hidden, ids[:, 1:], [0] * len(indices), lengths, greedy)


@torch.inference_mode()
def loglikelihood_rolling(model, texts: Sequence[Sequence[int]], prefix_token: int, max_length: int | None = None,
                          stride: int | None = None, batch_size: int = 16, progress: bool = False) -> list[float]:
    """The summed log-probability of every token of each text (token ids), as lm-eval's loglikelihood_rolling.

    Each text is read after prefix_token (a BOS or end-of-text token) in windows of max_length tokens (the model's
    context by default); the windows' scored spans tile the text, every token scored once, each after at least
    max_length - stride tokens of context where the text has them (stride = max_length: disjoint windows); a
    forward pass reads at most batch_size windows."""
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
    scores = _loglikelihood(model, requests, batch_size, progress, max_length, greedy=False)
    totals = [0.0] * len(texts)
    for owner, score in zip(owners, scores):
        totals[owner] += score.logprob
    return totals
