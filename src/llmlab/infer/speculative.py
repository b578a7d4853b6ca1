"""Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): a small draft model proposes k tokens one at a
time, the target scores all of them in one forward pass, and the longest prefix it agrees with is kept with one token
of the target's own, so that the output follows the target alone: the very tokens of its greedy decoding, or samples
of its own distribution (the rejection rule min(1, p/q), the residual max(0, p - q) on rejection).

    result = generate(target, prompts, GenerationConfig(max_new_tokens=64), draft_model=draft, speculate_k=4)
    result.speculation[0].mean_accepted

Each sequence (prompt, sample) runs by itself: rows of a batch accept different numbers of tokens, so they would
need caches of ragged lengths; one row at a time keeps both caches a single length, rolled back by truncation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import (
    DecodeState, GenerationResult, Prompts, StopWatch, _check_model_can_generate, _prepare_request, _seeds,
    decoded_text,
)
from llmlab.infer.sampling import PAD, TokenCounts, choose_tokens, process_logits


@dataclass
class SpeculationStats:
    """One sequence's speculative decoding: forward passes of the target (rounds), draft tokens proposed and kept."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    def count(self, drafted: int, accepted: int) -> None:
        """Count one round: one target pass over drafted tokens, accepted of them kept."""
        self.rounds, self.drafted, self.accepted = self.rounds + 1, self.drafted + drafted, self.accepted + accepted

    @property
    def mean_accepted(self) -> float:
        """Draft tokens kept per round; each round adds one token of the target's own besides."""
        return self.accepted / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        """The share of the draft tokens that were kept."""
        return self.accepted / self.drafted if self.drafted else 0.0


def check_draft(model, draft_model, speculate_k: int) -> None:
    """Raise ConfigError unless draft_model can propose tokens for model, speculate_k at a time."""
    if isinstance(speculate_k, bool) or not isinstance(speculate_k, int) or speculate_k < 1:
        raise ConfigError(f"speculate_k must be an integer of at least 1, not {speculate_k!r}.")
    _check_model_can_generate(draft_model)
    target, draft = model.config, draft_model.config
    if target.vocab_size != draft.vocab_size:
        raise ConfigError(f"The draft model's vocabulary of {draft.vocab_size} tokens differs from the target's "
                          f"{target.vocab_size}; speculative decoding needs one vocabulary.")
    if (target.arch == "encoder_decoder") != (draft.arch == "encoder_decoder"):
        raise ConfigError(f"The draft model is a {draft.arch} and the target a {target.arch}; speculative decoding "
                          f"needs both to be encoder-decoders or neither.")
    if draft_model.device != model.device:
        raise ConfigError(f"The draft model is on {draft_model.device} and the target on {model.device}; "
                          f"put both on one device.")


def check_speculation(model, draft_model, config: GenerationConfig, cache: str, speculate_k: int,
                      blanks: list[int] | None) -> None:
    """Raise ConfigError, in one sentence, for a request speculative decoding cannot serve."""
    check_draft(model, draft_model, speculate_k)
    if blanks is not None:
        raise ConfigError("GLM blank infilling runs without a draft model; speculative decoding over 2-D positions "
                          "is not supported.")
    if cache == "paged":
        raise ConfigError("Speculative decoding rolls rejected tokens back in a dynamic, static or ragged cache; "
                          "cache='paged' is not supported yet.")
    if config.num_beams > 1:
        raise ConfigError("Beam search (num_beams > 1) does not combine with speculative decoding; use num_beams=1.")


@torch.no_grad()
def speculative_generate(model, draft_model, prompts: Prompts, config: GenerationConfig | None = None, *,
                         tokenizer=None, cache: str = "auto", speculate_k: int = 4, **changes) -> GenerationResult:
    """generate() with draft_model proposing speculate_k tokens a round: the target's greedy tokens, or samples of
    its distribution, with each sequence's acceptance statistics in result.speculation."""
    config, lists, steps, tokenizer, blanks = _prepare_request(model, prompts, config, changes, tokenizer)
    check_speculation(model, draft_model, config, cache, speculate_k, blanks)
    seeds = _seeds(config, len(lists)) or [None] * (len(lists) * config.n)
    rows = [_speculate(model, draft_model, prompt, config, steps, cache, speculate_k, seed, tokenizer)
            for prompt, seed in zip([p for p in lists for _ in range(config.n)], seeds)]
    result = GenerationResult([row.tokens for row in rows], [row.reason for row in rows],
                              speculation=[row.stats for row in rows])
    if tokenizer is not None:
        result.text = [decoded_text(tokenizer, row.tokens, config) for row in rows]
    if config.logprobs is not None:
        result.logprobs = [row.logprobs for row in rows]
        result.top_logprobs = [row.top_logprobs for row in rows]
    return result


@dataclass
class _Row:
    """One sequence's new tokens, why it stopped, its statistics and (when asked for) the target's logprobs."""

    tokens: list[int]
    reason: str
    stats: SpeculationStats
    logprobs: list[float]
    top_logprobs: list[dict[int, float]]


def _speculate(model, draft_model, prompt: list[int], config: GenerationConfig, steps: int, cache: str, k: int,
               seed: int | None, tokenizer) -> _Row:
    """Generate up to steps tokens after one prompt, in rounds of at most k draft tokens and one target pass."""
    for _, row in speculation_steps(model, draft_model, prompt, config, steps, cache, k, seed, tokenizer):
        pass
    return row


@torch.no_grad()
def speculation_steps(model, draft_model, prompt: list[int], config: GenerationConfig, steps: int, cache: str,
                      k: int, seed: int | None = None, tokenizer=None) -> Iterator[tuple[int, _Row]]:
    """Speculative decoding of one prompt, yielding each new token as it is decided with the sequence so far (its
    finish reason final on the last one); a consumer that stops early (stream's stop strings) just stops asking."""
    ids = torch.tensor([prompt], device=model.device)
    vocab = model.config.vocab_size
    target = DecodeState(model, ids, None, steps, cache)
    start = target.sequence.shape[1]  # the prompt, or an encoder-decoder's start token
    draft_limit = draft_model.config.max_seq_len  # the draft sees at most this many positions; then the target alone
    draft = None
    if start <= draft_limit:
        draft = DecodeState(draft_model, ids, None, min(steps, draft_limit - start), cache)
    generator = torch.Generator(model.device).manual_seed(seed) if seed is not None and config.do_sample else None
    choosing = config.replace(logprobs=None)
    counts = TokenCounts.start(config, target.history(), vocab)
    watch = StopWatch(tokenizer, config, 1) if config.stop else None
    eos = () if config.ignore_eos else config.eos_token_ids
    row = _Row([], "length", SpeculationStats(), [], [])
    while True:
        length = target.sequence.shape[1]
        drafting = 0 if draft is None else max(0, min(k, steps - len(row.tokens) - 1, draft_limit - length + 1))
        drafts, draft_probs = _draft(draft, counts, choosing, drafting, vocab, generator)
        target.extend(drafts[None])
        logits = target.score(drafting + 1)[0]
        history = _history_along(target.history()[0, :length], drafts) if config.no_repeat_ngram_size else None
        scores = process_logits(logits, config, _counts_along(counts, drafts, vocab), history)
        accepted, token = _verify(scores, drafts, draft_probs, choosing, generator)
        row.stats.count(drafting, accepted)
        for state in [state for state in (target, draft) if state is not None]:
            state.crop(length + accepted)
            state.append(token)
        logprobs = logits.float().log_softmax(dim=-1) if config.logprobs is not None else None
        for position, new in enumerate(drafts[:accepted].tolist() + [int(token)]):
            row.tokens.append(new)
            counts.update(torch.tensor([new], device=ids.device))
            if logprobs is not None:
                top = logprobs[position].topk(min(config.logprobs, vocab))
                row.logprobs.append(float(logprobs[position, new]))
                row.top_logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
            if new in eos or (watch is not None and watch(torch.tensor([new]))):
                row.reason = "stop"
                yield new, row
                return
            yield new, row
            if len(row.tokens) == steps:
                return


def _draft(state: DecodeState | None, counts: TokenCounts, config: GenerationConfig, k: int, vocab: int,
           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """k draft tokens [k], each chosen after the ones before it, and the draft's distributions they came from."""
    device = counts.num_generated.device
    tokens, probs = [], []
    counts = counts.select(torch.zeros(1, dtype=torch.long, device=device))  # a copy the draft tokens update
    for _ in range(k):
        history = state.history() if config.no_repeat_ngram_size else None
        scores = process_logits(state.logits(), config, counts, history)
        token = choose_tokens(scores, config, generator).tokens
        tokens.append(token)
        probs.append(scores.softmax(dim=-1))
        counts.update(token)
        state.append(token)
    if not tokens:
        return torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, vocab, device=device)
    return torch.cat(tokens), torch.cat(probs)


def _counts_along(counts: TokenCounts, drafts: torch.Tensor, vocab: int) -> TokenCounts:
    """The counts before each of the k + 1 positions the target scores: after 0, 1, …, k of the drafts [k]."""
    k = drafts.shape[0]
    along = counts.select(torch.zeros(k + 1, dtype=torch.long, device=drafts.device))
    along.num_generated = along.num_generated + torch.arange(k + 1, device=drafts.device)
    if along.generated is not None:
        seen = F.one_hot(drafts, vocab).cumsum(dim=0).to(torch.int32)
        along.generated = along.generated + F.pad(seen, (0, 0, 1, 0))
    return along


def _history_along(history: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """The token history [k + 1, T + k] before each position the target scores: history [T] and 0..k drafts, PAD
    after them."""
    k, length = drafts.shape[0], history.shape[0]
    whole = torch.cat([history, drafts]).expand(k + 1, -1)
    ends = length + torch.arange(k + 1, device=drafts.device)
    return whole.masked_fill(torch.arange(length + k, device=drafts.device) >= ends[:, None], PAD)


def _verify(scores: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor, config: GenerationConfig,
            generator: torch.Generator | None) -> tuple[int, torch.Tensor]:
    """How many of the drafts [k] the target keeps, given its processed scores [k + 1, vocab], and its own next
    token [1]: where greedy decoding agrees, or by the rejection rule with the draft's distributions [k, vocab]."""
    k = drafts.shape[0]
    if not config.do_sample:
        choices = scores.argmax(dim=-1)
        accepted = int((choices[:k] == drafts).cumprod(dim=0).sum())
        return accepted, choices[accepted:accepted + 1]
    probs = scores.softmax(dim=-1)
    positions = torch.arange(k, device=drafts.device)
    uniform = torch.rand(k, generator=generator, device=drafts.device)
    # keep draft x with probability min(1, p(x) / q(x)), written without the division
    keep = uniform * draft_probs[positions, drafts] <= probs[positions, drafts]
    accepted = int(keep.cumprod(dim=0).sum())
    target = probs[accepted]
    if accepted < k:  # a rejection: the residual max(0, p - q), renormalised (p itself where rounding leaves none)
        residual = (target - draft_probs[accepted]).clamp_min(0)
        target = torch.where(residual.sum() > 0, residual, target)
    return accepted, choose_tokens(target.log()[None], config, generator).tokens
