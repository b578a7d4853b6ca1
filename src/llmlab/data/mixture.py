"""A deterministic mixture of token sources, cut into windows: the window of global sample i is a pure function
of (sources, seq_len, seed, i), so a trainer's batch for step s is samples [s·B, (s+1)·B) and resuming or
splitting across ranks needs no sampler state.

Each source's stream is cut into non-overlapping windows of seq_len tokens (documents are packed across window
boundaries, each ending with the end-of-text id); the last held_out_fraction of a source's windows is its
held-out split. A source's windows are visited in a fresh random order every epoch, seeded by (seed, source,
epoch, split). Sources are blended by splitting the sample sequence in halves of the source list, recursively:
at a node whose left sources hold the share p of its weight, its j-th sample goes left when round((j+1)·p)
exceeds round(j·p), so after n samples the left side holds round(n·p). Every prefix of the sequence matches
the weights within half a sample per level (two sources: within rounding), like Megatron-LM's blend, but
sample i is found in O(log sources) instead of by replaying the i samples before it (Megatron's rule is
sequential: at 6 µs a sample in Python, resuming a GPT-2-sized run would first replay 10^8 samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmlab.errors import ConfigError, DataError

SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class MixtureSource:
    """One source of a mixture: a token stream (TokenShards or anything with .tokens and .read(start, length)),
    with a weight, or a number of epochs (its weight is then epochs × its training tokens)."""

    stream: Any
    weight: float | None = None
    epochs: float | None = None
    name: str = "source"
    held_out: bool = True  # whether its last held_out_fraction of windows is held out (else all of it trains)


class TokenPrefix:
    """The first `tokens` tokens of a token stream, as a stream of its own."""

    def __init__(self, stream: Any, tokens: int):
        if tokens > stream.tokens:
            raise DataError(f"a prefix of {tokens} tokens was asked of a stream of {stream.tokens}.")
        self.stream, self.tokens = stream, tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """length token ids from start (within the prefix)."""
        if start + length > self.tokens:
            raise IndexError(f"tokens [{start}, {start + length}) lie past the prefix of {self.tokens}.")
        return self.stream.read(start, length)


def blend(weights: Sequence[float], samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source of each global sample index and its ordinal within that source (normalised weights)."""
    samples = np.asarray(samples, dtype=np.int64)
    sources, ordinals = np.zeros(samples.shape, dtype=np.int64), samples.copy()
    _split(np.asarray(weights, dtype=np.float64), 0, len(weights), np.ones(samples.shape, dtype=bool),
           sources, ordinals)
    return sources, ordinals


def _split(weights: np.ndarray, low: int, high: int, here: np.ndarray, sources: np.ndarray,
           ordinals: np.ndarray) -> None:
    """Send the samples at node [low, high) (mask here, ordinals within the node) down to its leaves."""
    if high - low == 1:
        sources[here] = low
        return
    middle = (low + high) // 2
    total = weights[low:high].sum()
    share = weights[low:middle].sum() / total if total > 0 else 0.5
    j = ordinals[here]
    before, after = np.floor(j * share + 0.5), np.floor((j + 1) * share + 0.5)
    left = after > before
    ordinals[here] = np.where(left, before, j - before).astype(np.int64)
    left_mask, right_mask = here.copy(), here.copy()
    left_mask[here] = left
    right_mask[here] = ~left
    _split(weights, low, middle, left_mask, sources, ordinals)
    _split(weights, middle, high, right_mask, sources, ordinals)


class Mixture:
    """The windows of one split (train or held_out) of weighted sources; see the module's docstring."""

    def __init__(self, sources: Sequence[MixtureSource], seq_len: int, seed: int = 0,
                 held_out_fraction: float = 0.0, split: str = "train", split_seq_len: int | None = None):
        """split_seq_len (held_out only): cut the held-out split into windows of seq_len after the training split of
        windows of split_seq_len ends, so that evaluating at another length reads no token the model trained on."""
        if not sources:
            raise ConfigError("a mixture needs at least one source.")
        if seq_len < 1:
            raise ConfigError(f"data.seq_len must be at least 1, not {seq_len}.")
        if not 0.0 <= held_out_fraction < 1.0:
            raise ConfigError(f"data.held_out_fraction must lie in [0, 1), not {held_out_fraction}.")
        if split not in SPLITS:
            raise ConfigError(f"a mixture's split is 'train' or 'held_out', not {split!r}.")
        self.sources, self.seq_len, self.seed, self.split = list(sources), seq_len, seed, split
        self.first_window, self.windows, train_windows = [], [], []
        for source in self.sources:
            total = source.stream.tokens // seq_len
            held_out = math.ceil(total * held_out_fraction) if source.held_out else 0
            if total - held_out < 1:
                raise DataError(f"the source {source.name} has {source.stream.tokens} tokens: too few for a training "
                                f"window of {seq_len} tokens besides its held-out share.")
            train_windows.append(total - held_out)
            first = 0 if split == "train" else total - held_out
            if split == "held_out" and split_seq_len is not None and source.held_out:
                trained = source.stream.tokens // split_seq_len
                trained = (trained - math.ceil(trained * held_out_fraction)) * split_seq_len  # tokens
                first = min(-(-trained // seq_len), total)
            self.first_window.append(first)
            self.windows.append(total - held_out if split == "train" else total - first)
        self.weights = source_weights(self.sources, train_windows)
        if split == "held_out":  # sources without held-out windows drop out of this split
            self.weights = normalised([w if n else 0.0 for w, n in zip(self.weights, self.windows)])
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        """Windows in one pass over this split (samples beyond it repeat sources in new epochs)."""
        return sum(self.windows)

    def locate(self, start: int, stop: int | None = None) -> list[tuple[int, int]]:
        """(source index, window index within that source's stream) of each global sample in [start, stop)."""
        stop = start + 1 if stop is None else stop
        if start < 0:
            raise IndexError(f"sample index {start} is negative.")
        if len(self) == 0:
            raise DataError(f"the {self.split} split of the mixture holds no windows.")
        sources, ordinals = blend(self.weights, np.arange(start, stop))
        located = []
        for source, ordinal in zip(sources.tolist(), ordinals.tolist()):
            epoch, position = divmod(ordinal, self.windows[source])
            located.append((source, self.first_window[source] + int(self._order(source, epoch)[position])))
        return located

    def _order(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._orders:
            if len(self._orders) >= 2 * len(self.sources):
                self._orders.pop(next(iter(self._orders)))
            generator = np.random.default_rng([self.seed, source, epoch, SPLITS.index(self.split)])
            self._orders[key] = generator.permutation(self.windows[source])
        return self._orders[key]

    def sample(self, i: int) -> np.ndarray:
        """The seq_len token ids (int64) of global sample i."""
        return self.samples(i, i + 1)[0]

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as a [stop - start, seq_len] int64 array."""
        rows = [self.sources[source].stream.read(window * self.seq_len, self.seq_len)
                for source, window in self.locate(start, stop)]
        return np.stack(rows).astype(np.int64).reshape(stop - start, self.seq_len)


def normalised(weights: Sequence[float]) -> list[float]:
    """weights divided by their sum."""
    total = sum(weights)
    return [weight / total for weight in weights] if total > 0 else list(weights)


def source_weights(sources: Sequence[MixtureSource], train_windows: Sequence[int]) -> list[float]:
    """Normalised weights: as given, or ∝ epochs × training windows; every source weight 1 if none says."""
    with_weight = [s.weight is not None for s in sources]
    with_epochs = [s.epochs is not None for s in sources]
    if any(w and e for w, e in zip(with_weight, with_epochs)) or (any(with_weight) and any(with_epochs)):
        raise ConfigError("give every data source a weight, or every one epochs, not both.")
    if any(with_epochs) and not all(with_epochs) or any(with_weight) and not all(with_weight):
        missing = next(s.name for s, w, e in zip(sources, with_weight, with_epochs) if not (w or e))
        raise ConfigError(f"the data source {missing} has no weight (or epochs) while others have.")
    if all(with_epochs):
        raw = [s.epochs * n for s, n in zip(sources, train_windows)]
    elif all(with_weight):
        raw = [s.weight for s in sources]
    else:
        raw = [1.0] * len(sources)
    for source, value in zip(sources, raw):
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"the data source {source.name} needs a positive weight or epochs, not {value}.")
    return normalised(raw)
