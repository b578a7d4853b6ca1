"""T5 span corruption (Raffel et al. 2020, §3.1.4): drop random spans, each replaced by a sentinel; predict them.

The semantics follow t5.data.preprocessors (random_spans_noise_mask, noise_span_to_unique_sentinel,
nonnoise_span_to_unique_sentinel): round(length · density) noise tokens in round(noise / mean_span) spans,
the mask starting with a non-noise span and ending with a noise span; sentinel k replaces span k in the inputs
and precedes it in the targets; inputs and targets end with EOS. Hand-written because no PyTorch library
ships these (T5's own are TensorFlow/seqio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError
from llmlab.objectives.common import IGNORE_INDEX, check_fraction, check_windows, pad_rows, padding_mask


def random_segmentation(num_items: int, num_segments: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lengths of a uniformly random split of num_items items into num_segments non-empty consecutive segments."""
    order = torch.randperm(num_items - 1, generator=generator)
    starts_segment = (torch.arange(num_items - 1) < num_segments - 1)[order]
    segment_ids = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), starts_segment.long()]), 0)
    return torch.bincount(segment_ids, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean [length] mask of noise tokens in random spans: T5's random_spans_noise_mask without random_roll."""
    original_length, length = length, max(length, 2)
    num_noise_tokens = min(max(round(length * noise_density), 1), length - 1)
    num_noise_spans = max(round(num_noise_tokens / mean_noise_span_length), 1)
    noise_lengths = random_segmentation(num_noise_tokens, num_noise_spans, generator)
    nonnoise_lengths = random_segmentation(length - num_noise_tokens, num_noise_spans, generator)
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=1).flatten()
    span_index = torch.repeat_interleave(torch.arange(2 * num_noise_spans), interleaved)
    return (span_index % 2 == 1)[:original_length]


def encoded_lengths(tokens_length: int, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(inputs, targets) lengths span corruption makes of tokens_length tokens, each with its EOS."""
    noise = min(max(round(tokens_length * noise_density), 1), tokens_length - 1)
    spans = max(round(noise / mean_noise_span_length), 1)
    return tokens_length - noise + spans + 1, noise + spans + 1


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(window length, targets length) whose inputs come out exactly inputs_length long, as T5's random_spans_helper."""
    tokens_length = inputs_length - 1
    while encoded_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        tokens_length += 1
    targets_length = encoded_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # T5's tweak to keep the targets at inputs_length
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def sentinel_ids(count: int, vocab_size: int | None = None, ids: Sequence[int] | None = None) -> list[int]:
    """The first count sentinel ids: from the given list, or vocab_size - 1, vocab_size - 2, … (T5's <extra_id_k>)."""
    if ids is not None:
        if count > len(ids):
            raise ConfigError(f"span corruption needs {count} sentinel ids but only {len(ids)} were given.")
        return list(ids[:count])
    if vocab_size is None:
        raise ConfigError("span corruption needs sentinel_ids or vocab_size to choose its sentinel tokens.")
    return [vocab_size - 1 - k for k in range(count)]


def _spans_to_sentinels(tokens: torch.Tensor, mask: torch.Tensor, sentinels: list[int]) -> torch.Tensor:
    """Replace each run of masked tokens by the next sentinel, as T5's noise_span_to_unique_sentinel."""
    previous = torch.cat([torch.zeros(1, dtype=torch.bool), mask[:-1]])
    first = mask & ~previous
    if not first.any():
        return tokens.clone()
    span_number = torch.cumsum(first.long(), 0) - 1
    replaced = torch.where(first, torch.tensor(sentinels)[span_number.clamp(min=0)], tokens)
    return replaced[~(mask & previous)]


def sentinels_needed(noise_mask: torch.Tensor) -> int:
    """How many sentinels corrupt_spans uses: the larger of the numbers of noise and of non-noise spans."""
    starts = noise_mask != torch.cat([~noise_mask[:1], noise_mask[:-1]])
    noise_spans = int((starts & noise_mask).sum())
    return max(noise_spans, int(starts.sum()) - noise_spans)


def corrupt_spans(tokens: torch.Tensor, noise_mask: torch.Tensor, sentinels: Sequence[int],
                  eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one 1-D sequence for a given noise mask: noise spans → sentinels, and the converse."""
    sentinels = sentinel_ids(sentinels_needed(noise_mask), ids=sentinels)
    eos = torch.tensor([eos_token_id])
    inputs = _spans_to_sentinels(tokens, noise_mask, sentinels)
    targets = _spans_to_sentinels(tokens, ~noise_mask, sentinels)
    return torch.cat([inputs, eos]), torch.cat([targets, eos])


@dataclass(frozen=True)
class SpanCorruption:
    """T5's span corruption for an encoder-decoder: input_ids/attention_mask (encoder) and labels (decoder).

    Sentinels come from sentinel_ids, or count down from vocab_size - 1. mode_token_id, when set, is prepended
    to every input (UL2's paradigm tokens). Rows are right-padded with pad_token_id (labels with -100).
    decoder_only=True recasts each batch with to_decoder_only, for a (prefix) decoder.
    """

    eos_token_id: int
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    vocab_size: int | None = None
    sentinel_ids: tuple[int, ...] | None = None
    pad_token_id: int = 0
    mode_token_id: int | None = None
    decoder_only: bool = False

    def __post_init__(self):
        check_fraction(self.noise_density, "SpanCorruption.noise_density")
        if self.mean_noise_span_length < 1:
            raise ConfigError("SpanCorruption.mean_noise_span_length must be at least 1, "
                              f"got {self.mean_noise_span_length}.")
        sentinel_ids(0, self.vocab_size, self.sentinel_ids)

    def example(self, tokens: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for one 1-D sequence with a freshly drawn noise mask."""
        mask = random_spans_noise_mask(len(tokens), self.noise_density, self.mean_noise_span_length, generator)
        sentinels = sentinel_ids(sentinels_needed(mask), self.vocab_size, self.sentinel_ids)
        inputs, targets = corrupt_spans(tokens, mask, sentinels, self.eos_token_id)
        if self.mode_token_id is not None:
            inputs = torch.cat([torch.tensor([self.mode_token_id]), inputs])
        return inputs, targets

    def __call__(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Return input_ids, attention_mask and labels for a batch of token windows."""
        windows = check_windows(windows, "SpanCorruption")
        batch = encoder_decoder_batch([self.example(row, generator) for row in windows], self.pad_token_id)
        return to_decoder_only(batch, self.pad_token_id) if self.decoder_only else batch


def encoder_decoder_batch(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_token_id: int) -> dict:
    """Pad (inputs, targets) pairs into input_ids, attention_mask and labels (-100 on padding)."""
    inputs, targets = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
    return {"input_ids": pad_rows(inputs, pad_token_id), "attention_mask": padding_mask(inputs),
            "labels": pad_rows(targets, IGNORE_INDEX)}


def to_decoder_only(batch: dict, pad_token_id: int = 0) -> dict:
    """Recast an encoder-decoder batch for a decoder: inputs then targets, the inputs as a bidirectional prefix.

    As UL2 trains its decoder-only models: loss only on the targets, prefix_lengths = the real input lengths.
    """
    rows, labels, prefix_lengths = [], [], []
    for inputs, mask, targets in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        inputs, targets = inputs[mask.bool()], targets[targets != IGNORE_INDEX]
        rows.append(torch.cat([inputs, targets]))
        labels.append(torch.cat([torch.full_like(inputs, IGNORE_INDEX), targets]))
        prefix_lengths.append(len(inputs))
    return {"input_ids": pad_rows(rows, pad_token_id), "labels": pad_rows(labels, IGNORE_INDEX),
            "prefix_lengths": torch.tensor(prefix_lengths)}

