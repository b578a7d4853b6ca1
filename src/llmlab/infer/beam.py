"""Beam search (survey §6): follow the num_beams most likely continuations of each prompt and keep the num_beams best
finished hypotheses, each scored sum of log-probabilities / (new tokens) ** length_penalty, as transformers does.

Semantics are transformers' (5.x) beam search: the processors (penalties, n-gram blocking, min_new_tokens) act on
log-probabilities; each step ranks (1 + number of EOS ids, at least 2) × num_beams candidates of every prompt; only the
best num_beams of them may finish (by an EOS id or the last step); the length is the number of new tokens, EOS
included (the prompt is not counted, for decoders as for encoder-decoders); early_stopping True stops a prompt once it
has num_beams hypotheses, False once the best running beam, scored at its current length, cannot beat the worst kept,
"never" the same but scored at the longest length when length_penalty > 0.

    result = generate(model, prompts, num_beams=4, n=2, length_penalty=0.6, early_stopping=True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import DecodeState, GenerationResult, _pad_id, left_padded, start_decoding
from llmlab.infer.sampling import process_logits

NEG = -1.0e9  # transformers' score for a slot that must never win; used alike so that scores match its own


@dataclass
class Beams:
    """Each prompt's finished hypotheses, best first: tokens [batch, beams, steps] (pad after each one's length),
    lengths [batch, beams] and scores [batch, beams] (sum of log-probabilities / length ** length_penalty)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor

    def best(self, n: int) -> tuple[list[list[int]], list[float]]:
        """The n best hypotheses of every prompt (prompt-major) as token lists, and their scores."""
        rows = self.tokens[:, :n].reshape(-1, self.tokens.shape[-1]).tolist()
        lengths = self.lengths[:, :n].reshape(-1).tolist()
        return [row[:length] for row, length in zip(rows, lengths)], self.scores[:, :n].reshape(-1).tolist()


def _along_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [batch, slots, ...] at index [batch, picks] along the slots."""
    return tensor.gather(1, index.view(*index.shape, *[1] * (tensor.dim() - 2)).expand(-1, -1, *tensor.shape[2:]))


@torch.no_grad()
def beam_search(state: DecodeState, config: GenerationConfig, steps: int, pad: int = 0) -> Beams:
    """Beam search of up to steps new tokens for every row of a new DecodeState: one prefill, each row then fanned out
    to config.num_beams rows, the cache reordered by parent beam every step."""
    beams, penalty = config.num_beams, config.length_penalty
    eos, counts, logits = start_decoding(state, config, beams)
    batch, vocab, device = logits.shape[0] // beams, logits.shape[-1], logits.device
    width = max(2, 1 + (0 if eos is None else len(eos))) * beams  # enough candidates for num_beams not to end
    leading = torch.arange(width, device=device) < beams  # only the best num_beams candidates may finish
    first_rows = torch.arange(batch, device=device)[:, None] * beams
    running = torch.full((batch, beams, steps), pad, dtype=torch.long, device=device)
    running_scores = torch.full((batch, beams), NEG, device=device)
    running_scores[:, 0] = 0.0  # the copies of a prompt are alike: let one of them propose the first candidates
    done, done_scores = running.clone(), torch.full((batch, beams), NEG, device=device)
    done_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch, 1), dtype=torch.bool, device=device)
    for step in range(steps):
        logprobs = process_logits(logits.float().log_softmax(dim=-1), config, counts,
                                  state.history() if config.no_repeat_ngram_size else None)
        total = (logprobs.view(batch, beams, vocab) + running_scores[..., None]).view(batch, beams * vocab)
        scores, index = total.topk(width)
        parents, tokens = index // vocab, index % vocab
        candidates = _along_beams(running, parents)
        candidates[:, :, step] = tokens
        ends = torch.ones_like(tokens, dtype=torch.bool) if step == steps - 1 else \
            torch.isin(tokens, eos) if eos is not None else torch.zeros_like(tokens, dtype=torch.bool)

        # finished hypotheses: the leading candidates that end, while the prompt can still take or improve them
        closed = improvable & ~(finished.all(-1, keepdim=True) & (config.early_stopping is True))
        final = scores / (step + 1) ** penalty + (~(closed & ends & leading)).float() * NEG
        merged = torch.cat([done_scores, final], dim=1).topk(beams).indices
        done_scores = _along_beams(torch.cat([done_scores, final], dim=1), merged)
        done = _along_beams(torch.cat([done, candidates], dim=1), merged)
        done_lengths = _along_beams(torch.cat([done_lengths, torch.full_like(tokens, step + 1)], dim=1), merged)
        finished = _along_beams(torch.cat([finished, ends & leading], dim=1), merged)

        # running beams: the best candidates that did not end
        alive = scores + ends.float() * NEG
        kept = alive.topk(beams).indices
        running_scores, running = _along_beams(alive, kept), _along_beams(candidates, kept)
        best_length = steps if config.early_stopping == "never" and penalty > 0 else step + 1
        worst = torch.where(finished.all(-1, keepdim=True), done_scores.min(-1, keepdim=True).values, NEG)
        improvable &= running_scores[:, :1] / best_length ** penalty > worst
        if bool(~improvable.any() | ends.all() | (finished.all() & (config.early_stopping is True))):  # one sync
            break
        rows = (_along_beams(parents, kept) + first_rows).view(-1)
        state.reorder(rows)
        counts = counts.select(rows)
        new = running[:, :, step].reshape(-1)
        counts.update(new)
        state.append(new)
        logits = state.logits()
    return Beams(done, done_lengths, done_scores)


def generate_beams(model, prompts: list[list[int]], config: GenerationConfig, steps: int, tokenizer=None,
                   cache: str = "auto") -> GenerationResult:
    """generate() with num_beams > 1: the config.n best hypotheses per prompt (prompt-major) with their scores in
    sequences_scores; logprobs are not reported for beams (None)."""
    if config.stop:
        raise ConfigError("Stop strings are not supported with beam search (num_beams > 1); use num_beams=1.")
    pad = _pad_id(model, config)
    ids, mask = left_padded(prompts, pad, model.device)
    tokens, scores = beam_search(DecodeState(model, ids, mask, steps, cache), config, steps, pad).best(config.n)
    eos = () if config.ignore_eos else config.eos_token_ids
    result = GenerationResult(tokens, ["stop" if row[-1] in eos else "length" for row in tokens],
                              sequences_scores=scores)
    if tokenizer is not None:
        result.text = [tokenizer.decode(row, skip_special_tokens=True) for row in tokens]
    return result


def generate_beam_ids(state: DecodeState, config: GenerationConfig, steps: int, pad: int) -> torch.Tensor:
    """generate_ids with num_beams > 1: prompt + the config.n best hypotheses [batch * n, prompt + longest], pad
    after each hypothesis, as transformers' generate returns them."""
    prompt = state.sequence
    beams = beam_search(state, config, steps, pad)
    n = config.n
    longest = int(beams.lengths[:, :n].max())
    new = beams.tokens[:, :n, :longest].reshape(-1, longest)
    return torch.cat([prompt.repeat_interleave(n, dim=0), new], dim=1)
