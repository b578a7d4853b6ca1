"""The training data until the data pipeline's shards land: a token stream (the bundled corpus or a token file)
cut into random windows by a sampler whose position can be checkpointed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from llmlab.data.packing import sample_batch
from llmlab.data.tokenizer import END_OF_TEXT
from llmlab.errors import DataError

TOKEN_FILE_SUFFIXES = (".npy", ".bin")


def tokenize_documents(tokenizer, texts: list[str]) -> torch.Tensor:
    """Encode texts into one 1-D stream of token ids, each document followed by <|endoftext|>."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(end_of_text)
    return torch.tensor(ids, dtype=torch.long)


def read_token_file(path: str | os.PathLike) -> torch.Tensor:
    """A 1-D stream of token ids from a .npy array or a flat .bin file of uint16 ids (nanoGPT's format)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the token file {path} does not exist.")
    if path.suffix not in TOKEN_FILE_SUFFIXES:
        raise DataError(f"{path} is not a token file; use a .npy array or a .bin file of uint16 token ids.")
    try:
        array = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.fromfile(path, dtype=np.uint16)
    except (OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read as a token file ({error}).") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path} must hold a 1-D array of integer token ids, not {array.dtype} of shape {array.shape}.")
    return torch.from_numpy(array.astype(np.int64))


def split_held_out(tokens: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The stream without its last `fraction` of tokens, and that held-out tail."""
    held_out = int(tokens.numel() * fraction)
    return tokens[: tokens.numel() - held_out], tokens[tokens.numel() - held_out :]


def fixed_batches(tokens: torch.Tensor, count: int, batch_size: int, seq_len: int, seed: int) -> list[dict]:
    """The same count random batches on every call: held-out data for evaluation."""
    generator = torch.Generator().manual_seed(seed)
    return [sample_batch(tokens, batch_size, seq_len, generator) for _ in range(count)]


class RandomWindows:
    """An endless iterator of random-window batches whose position (generator state, batches drawn) checkpoints."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        sample_batch(tokens[:seq_len], 1, seq_len, torch.Generator())  # reject a too-short stream now, not mid-run
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0

    def __iter__(self) -> "RandomWindows":
        return self

    def __next__(self) -> dict:
        self.drawn += 1
        return sample_batch(self.tokens, self.batch_size, self.seq_len, self.generator)

    def state_dict(self) -> dict:
        """The sampler's position: its generator's state and how many batches it has drawn."""
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by state_dict."""
        self.generator.set_state(state["generator"])
        self.drawn = int(state["drawn"])
