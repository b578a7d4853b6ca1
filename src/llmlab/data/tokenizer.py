"""Byte-level BPE tokenizers in the GPT-2 style, trained and stored with Hugging Face `tokenizers`."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llmlab.errors import DataError

END_OF_TEXT = "<|endoftext|>"
PAD = "<pad>"
DEFAULT_SPECIAL_TOKENS = (END_OF_TEXT, PAD)
TOKENIZER_FILE = "tokenizer.json"

# The special tokens the pretraining objectives need, by name (objectives take their ids).
SENTINEL = "<extra_id_{}>"  # T5's sentinels, <extra_id_0> first
UL2_MODE_TOKENS = {"R": "[R]", "S": "[S]", "X": "[X]"}
MASK, SENTENCE_MASK, GENERATION_MASK = "[MASK]", "[sMASK]", "[gMASK]"  # BERT's and GLM's masks
START_OF_PIECE, END_OF_PIECE = "<|startofpiece|>", "<|endofpiece|>"  # GLM's [sop] and [eop]


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer on texts; special tokens take the first ids."""
    special_tokens = list(special_tokens)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise DataError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE tokenizer needs at least "
            f"{len(alphabet) + len(special_tokens)} ids for its 256 bytes and {len(special_tokens)} special tokens."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> str:
    """Write tokenizer.json into directory (created if missing) and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, TOKENIZER_FILE)
    tokenizer.save(path)
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a tokenizer.json file or a directory containing one."""
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise DataError(f"no tokenizer file was found at {path}.")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:
        raise DataError(f"{path} is not a valid tokenizer.json file: {error}.") from error
