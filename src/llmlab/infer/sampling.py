"""Choosing the next token (survey §6): penalties, n-gram blocking, temperature, top-k, top-p and min-p, then argmax
or a sample.

Every per-step function works on whole batches on the device, with no Python loop over rows or vocabulary and no
host synchronisation, so that a decode loop can call it each step (and compile it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig

PAD = -1  # marks padding in token histories; any negative id counts as padding


@dataclass
class TokenCounts:
    """Per-row token statistics the penalties and min_new_tokens need, kept on the device, updated once per step."""

    num_generated: torch.Tensor  # [batch] int64
    eos: torch.Tensor  # [vocab] bool: the ids min_new_tokens holds back
    in_prompt: torch.Tensor | None = None  # [batch, vocab] bool, kept for the repetition penalty
    generated: torch.Tensor | None = None  # [batch, vocab] int32, kept for all three penalties

    @classmethod
    def start(cls, config: GenerationConfig, prompt_ids: torch.Tensor, vocab_size: int) -> TokenCounts:
        """Counts for prompts [batch, T] (PAD-padded anywhere) before any token is generated."""
        batch, device = prompt_ids.shape[0], prompt_ids.device
        outside = [token for token in config.eos_token_ids if token >= vocab_size]
        if outside:
            raise ConfigError(f"GenerationConfig.eos_token_id {outside[0]} is outside the vocabulary of {vocab_size}.")
        eos = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        eos[list(config.eos_token_ids)] = True  # a host-to-device copy, once per generation rather than per step
        counts = cls(num_generated=torch.zeros(batch, dtype=torch.long, device=device), eos=eos)
        if config.repetition_penalty != 1.0:
            counts.in_prompt = _token_mask(prompt_ids, vocab_size)
        if config.repetition_penalty != 1.0 or config.presence_penalty or config.frequency_penalty:
            counts.generated = torch.zeros(batch, vocab_size, dtype=torch.int32, device=device)
        return counts

    def update(self, tokens: torch.Tensor) -> None:
        """Count the tokens [batch] just chosen (valid ids; a finished row may repeat any id)."""
        self.num_generated += 1
        if self.generated is not None:
            self.generated.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.int32))

    def select(self, rows: torch.Tensor) -> TokenCounts:
        """The counts of the given rows, in that order (beam search reordering, n samples per prompt)."""
        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.index_select(0, rows)
        return TokenCounts(pick(self.num_generated), self.eos, pick(self.in_prompt), pick(self.generated))


def _token_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] bool: which ids occur in each row of ids [batch, T], padding ignored."""
    mask = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    mask.scatter_(1, ids.masked_fill(ids < 0, vocab_size), True)
    return mask[:, :vocab_size]


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al., 2019) on seen [batch, vocab] tokens: positive scores / penalty, negative ones * it."""
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def presence_frequency_penalty(scores: torch.Tensor, generated: torch.Tensor, presence: float, frequency: float
                               ) -> torch.Tensor:
    """OpenAI's penalties: subtract frequency * count and presence * (count > 0) of each generated token."""
    counts = generated.to(scores.dtype)
    return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


def banned_ngram_tokens(history: torch.Tensor, size: int, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] bool: the tokens that would repeat an n-gram of `size` already in history [batch, T].

    Each row's tokens must be contiguous: PAD before them (left padding), after them (right padding) or both.
    """
    batch, length = history.shape
    banned = torch.zeros(batch, vocab_size + 1, dtype=torch.bool, device=history.device)
    if length < size:
        return banned[:, :vocab_size]
    last = length - 1 - (history >= 0).flip(1).to(torch.int8).argmax(dim=1)  # each row's last token
    offsets = torch.arange(2 - size, 1, device=history.device)
    context = history.gather(1, (last[:, None] + offsets).clamp(min=0))  # its last size - 1 tokens
    windows = history.unfold(1, size, 1)  # [batch, length - size + 1, size]: every n-gram so far
    whole = (windows[..., 0] >= 0) & (windows[..., -1] >= 0)
    repeats = (windows[..., :-1] == context[:, None]).all(-1) & whole
    banned.scatter_(1, torch.where(repeats, windows[..., -1], vocab_size), True)
    return banned[:, :vocab_size]


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Scores below the k-th largest of their row set to -inf (ties with it kept); k = 0 keeps all."""
    if not 0 < k < scores.shape[-1]:
        return scores
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the most likely tokens whose probabilities sum to p or more."""
    if p >= 1.0:
        return scores
    ascending, order = scores.sort(dim=-1)
    drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - p
    drop[..., -1] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def min_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p filtering (Nguyen et al., 2024): drop tokens less likely than p times the row's most likely token."""
    if p <= 0.0:
        return scores
    probs = scores.softmax(dim=-1)
    drop = probs < p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return scores.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, config: GenerationConfig, counts: TokenCounts,
                   history: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 scores [batch, vocab] from next-token logits after every option of config, in transformers' order.

    history [batch, T] (prompt and generated tokens, contiguous in each row, PAD before and/or after them) is needed
    only for no_repeat_ngram_size.
    Penalties come first (repetition, then frequency and presence as in vLLM), then n-gram blocking and
    min_new_tokens; temperature, top-k, top-p and min-p only when sampling.
    """
    scores = logits.float()
    if config.repetition_penalty != 1.0:
        seen = counts.in_prompt | (counts.generated > 0)
        scores = repetition_penalty(scores, seen, config.repetition_penalty)
    if config.presence_penalty or config.frequency_penalty:
        scores = presence_frequency_penalty(scores, counts.generated, config.presence_penalty, config.frequency_penalty)
    if config.no_repeat_ngram_size:
        if history is None:
            raise ValueError("process_logits needs the token history for no_repeat_ngram_size.")
        scores = scores.masked_fill(banned_ngram_tokens(history, config.no_repeat_ngram_size, scores.shape[-1]),
                                    float("-inf"))
    if config.min_new_tokens:
        early = (counts.num_generated < config.min_new_tokens)[:, None]
        scores = scores.masked_fill(early & counts.eos, float("-inf"))
    if config.do_sample:
        if config.temperature != 1.0:
            scores = scores / config.temperature
        scores = min_p_filter(top_p_filter(top_k_filter(scores, config.top_k), config.top_p), config.min_p)
    return scores


class Choice(NamedTuple):
    """The chosen tokens [batch] and, when logprobs were asked for, their log-probabilities and the top alternatives."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None  # [batch]
    top_tokens: torch.Tensor | None = None  # [batch, k], most likely first
    top_logprobs: torch.Tensor | None = None  # [batch, k]


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One seeded random generator per row, on the device the scores live on."""
    return [torch.Generator(device).manual_seed(seed) for seed in seeds]


def _exponential_noise(shape: torch.Size, device: torch.device, rows: Sequence[torch.Generator] | torch.Generator | None
                       ) -> torch.Tensor:
    """Exp(1) noise [batch, vocab]; with a list of generators, row i is drawn from generator i alone."""
    noise = torch.empty(shape, device=device)
    if rows is None or isinstance(rows, torch.Generator):
        return noise.exponential_(generator=rows)
    if len(rows) != shape[0]:
        raise ValueError(f"choose_tokens got {len(rows)} generators for {shape[0]} rows.")
    for row, generator in zip(noise, rows):  # one kernel launch per row: torch has no batched generator
        row.exponential_(generator=generator)
    return noise


def choose_tokens(scores: torch.Tensor, config: GenerationConfig,
                  generator: Sequence[torch.Generator] | torch.Generator | None = None,
                  logits: torch.Tensor | None = None) -> Choice:
    """Argmax of the processed scores [batch, vocab], or a sample from their softmax when config.do_sample.

    generator: one per row (row i then depends only on generator i), one for the whole batch, or None for torch's
    default. With config.logprobs set, the log-probabilities are those of the raw model logits [batch, vocab] before
    any processing, as vLLM reports by default (its logprobs_mode "raw_logprobs").
    """
    if config.do_sample:
        probs = scores.softmax(dim=-1)
        noise = _exponential_noise(probs.shape, probs.device, generator)
        # argmax of p / E with E ~ Exp(1) is a sample of p: E / p is exponential with rate p (a race of exponentials)
        tokens = (probs / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(dim=-1)
    else:
        tokens = scores.argmax(dim=-1)
    if config.logprobs is None:
        return Choice(tokens)
    if logits is None:
        raise ValueError("choose_tokens needs the raw logits when config.logprobs is set.")
    logprobs = logits.float().log_softmax(dim=-1)
    top = logprobs.topk(min(config.logprobs, logprobs.shape[-1]), dim=-1)
    return Choice(tokens, logprobs.gather(1, tokens[:, None]).squeeze(1), top.indices, top.values)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k tokens, or outside the smallest set with probability >= top_p, to -inf."""
    return top_p_filter(top_k_filter(logits, top_k or 0), 1.0 if top_p is None else top_p)


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
