"""The files beside tokenizer.json that tell transformers' AutoTokenizer and generate() the special tokens."""

from __future__ import annotations

import os

from tokenizers import Tokenizer

from llmlab.model.config import ModelConfig
from llmlab.model.hf.common import hf_tokens

SPECIAL_TOKENS = ("bos", "eos", "pad")


def special_tokens_map(config: ModelConfig, tokenizer: Tokenizer) -> dict[str, str]:
    """bos_token, eos_token and pad_token: the strings of the config's token ids (those set and in the vocabulary)."""
    tokens = {}
    for name in SPECIAL_TOKENS:
        token_id = getattr(config, f"{name}_token_id")
        token = tokenizer.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            tokens[f"{name}_token"] = token
    return tokens


def tokenizer_files(config: ModelConfig, tokenizer_file: str | os.PathLike) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a tokenizer.json and the model it belongs to."""
    special = special_tokens_map(config, Tokenizer.from_file(str(tokenizer_file)))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.max_seq_len,
                        "clean_up_tokenization_spaces": False, **special}
    return {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": special}


def generation_config(config: ModelConfig) -> dict:
    """generation_config.json: the token ids generate() starts, stops and pads with."""
    return hf_tokens(config)
