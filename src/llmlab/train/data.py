"""The training data: shard directories blended by a Mixture (the bundled corpus is first tokenized into a shard
directory of the run), batched per step by StepBatches."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from llmlab.data.mixture import Mixture, MixtureSource, TokenPrefix
from llmlab.data.shards import TokenShards, tokenize_to_shards
from llmlab.data.tokenizer import DEFAULT_SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer
from llmlab.errors import ConfigError, DataError
from llmlab.train.distributed import rank_rows
from llmlab.train.recipe import DataConfig, ShardSource

BUNDLED = "bundled"


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator an objective draws step's batch with: seeded by (seed, step) only."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class StepIndexed:
    """An endless iterator of batches that are a function of the step alone (batch(step)), so that its position,
    the next step, is all a checkpoint needs to resume it exactly."""

    step = 0

    def batch(self, step: int) -> dict:
        """The batch of step."""
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        """The position: the next step."""
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue at a position saved by state_dict."""
        self.step = int(state["step"])


class StepBatches(StepIndexed):
    """Batches by step: step s is the objective applied to mixture samples [s·B, (s+1)·B) with a generator seeded
    by (seed, s); this rank keeps rows [rank·B/W, (rank+1)·B/W), so W processes see the one-process batch."""

    def __init__(self, mixture: Mixture, objective: Callable, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1 or batch_size % world_size:
            raise ConfigError(f"data.batch_size {batch_size} must be a positive multiple of the {world_size} "
                              "processes.")
        self.mixture, self.objective, self.batch_size, self.seed = mixture, objective, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0

    def batch(self, step: int) -> dict:
        """This rank's rows of step's batch."""
        start = step * self.batch_size
        windows = torch.from_numpy(self.mixture.samples(start, start + self.batch_size))
        batch = self.objective(windows, step_generator(self.seed, step))
        return rank_rows(batch, self.rank, self.world_size)


def held_out_batches(mixture: Mixture, objective: Callable, count: int, batch_size: int, seed: int, rank: int = 0,
                     world_size: int = 1) -> list[dict]:
    """This rank's rows of the first count batches of a held-out mixture (the same on every call); none when it
    holds no window."""
    if len(mixture) == 0:
        return []
    batches = StepBatches(mixture, objective, batch_size, seed, rank, world_size)
    return [batches.batch(step) for step in range(count)]


def open_sources(data: DataConfig) -> list[MixtureSource]:
    """The recipe's shard directories as mixture sources (DataError naming a missing or damaged one)."""
    opened = []
    for spec in data.sources or (ShardSource(data.source),):
        if spec.path == BUNDLED:
            raise ConfigError("the bundled corpus can only be data.source, not one of data.sources.")
        if not Path(spec.path).exists():
            raise DataError(f"the data source {spec.path} does not exist.")
        opened.append(MixtureSource(TokenShards(spec.path), spec.weight, spec.epochs, name=spec.path))
    first = opened[0].stream
    for other in opened[1:]:
        stream = other.stream
        same = (stream.vocab_size, stream.eos_token_id) == (first.vocab_size, first.eos_token_id) and \
            _file_bytes(stream.tokenizer_file) == _file_bytes(first.tokenizer_file)
        if not same:
            raise DataError(f"the data sources {first.directory} and {stream.directory} were tokenized with "
                            "different tokenizers.")
    return opened


def with_repeated_subset(sources: list[MixtureSource], data: DataConfig) -> list[MixtureSource]:
    """sources (one) plus, when data.repeated_fraction > 0, its first data.repeated_windows windows as a second
    source drawn data.repeated_fraction of the time and never held out."""
    if not data.repeated_fraction:
        return sources
    (fresh,) = sources
    windows = fresh.stream.tokens // data.seq_len
    training = windows - math.ceil(windows * data.held_out_fraction)  # as Mixture splits it
    if data.repeated_windows > training:
        raise ConfigError(f"data.repeated_windows is {data.repeated_windows}, more than the {training} training "
                          f"windows of {fresh.name}.")
    tokens = data.repeated_windows * data.seq_len
    repeated = MixtureSource(TokenPrefix(fresh.stream, tokens), data.repeated_fraction,
                             name=f"{fresh.name} (first {data.repeated_windows} windows, repeated)", held_out=False)
    return [dataclasses.replace(fresh, weight=1.0 - data.repeated_fraction, epochs=None), repeated]


def _file_bytes(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def bundled_shards(directory: str | os.PathLike, vocab_size: int, max_chars: int | None,
                   special_tokens: Iterable[str] = (), progress: bool = False) -> TokenShards:
    """The bundled corpus tokenized into directory with a byte-level BPE tokenizer trained on it (with
    special_tokens after <|endoftext|> and <pad>); an existing complete directory built alike is reused."""
    directory = Path(directory)
    recipe = {"vocab_size": vocab_size, "max_chars": max_chars,
              "special_tokens": [*DEFAULT_SPECIAL_TOKENS, *special_tokens]}
    if directory.exists():
        shards = TokenShards(directory)
        if shards.index.get("bundled") != recipe:
            raise ConfigError(f"{directory} holds the bundled corpus tokenized as {shards.index.get('bundled')}, "
                              f"not as the recipe asks ({recipe}).")
        return shards
    from llmlab.data.corpus import bundled_documents

    texts = [document["text"] for document in bundled_documents(max_chars)]
    for stale in directory.parent.glob(f".{directory.name}.*.tmp"):  # left by a run killed while tokenizing
        shutil.rmtree(stale, ignore_errors=True)
    tokenizer = train_bpe_tokenizer(texts, vocab_size, recipe["special_tokens"])
    tokenize_to_shards(texts, tokenizer, directory, progress=progress, bundled=recipe)
    return TokenShards(directory)


def shard_tokenizer(shards: TokenShards):
    """The tokenizer of a shard directory, or None when it has no tokenizer.json."""
    return load_tokenizer(shards.tokenizer_file) if shards.tokenizer_file is not None else None
