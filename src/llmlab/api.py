"""The public API: load, save and convert checkpoints in llmlab or Hugging Face format."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from llmlab.adapt.peft_format import ADAPTER_CONFIG
from llmlab.data.tokenizer import load_tokenizer
from llmlab.errors import CheckpointError, ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.model.checkpoint import (CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, check_output_directory,
                                    load_llmlab, save_llmlab)
from llmlab.model.hf import load_hf, save_hf
from llmlab.model.transformer import Model

FORMATS = ("llmlab", "hf")


def load(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None) -> Model:
    """Load an llmlab or Hugging Face model directory, with its tokenizer.json (if any) as model.tokenizer and its
    generation_config.json (if any) as model.generation_config, generate()'s defaults; a PEFT LoRA adapter directory
    (adapter_config.json) loads its base from base_model_name_or_path with the adapter applied."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory.")
    if (path / ADAPTER_CONFIG).exists():
        return load_with_adapter(path, dtype=dtype, device=device)
    if (path / CONFIG_FILE).exists():
        model = load_llmlab(path, dtype=dtype, device=device)
    elif (path / "config.json").exists():
        model = load_hf(path, dtype=dtype, device=device)
    else:
        raise CheckpointError(f"{path} has neither {CONFIG_FILE} (llmlab) nor config.json (Hugging Face).")
    if (path / TOKENIZER_FILE).exists():
        model.tokenizer = load_tokenizer(path)
    if (path / GENERATION_CONFIG_FILE).exists():
        try:
            model.generation_config = GenerationConfig.from_hf(path / GENERATION_CONFIG_FILE)
        except ConfigError as error:  # unreadable JSON names the file already; a bad value does not
            message = str(error)
            raise CheckpointError(message if GENERATION_CONFIG_FILE in message
                                  else f"{path / GENERATION_CONFIG_FILE}: {message}") from None
    return model.eval()


def adapter_base(path: str | os.PathLike) -> Path:
    """The base checkpoint directory an adapter names (base_model_name_or_path, else relative to the adapter)."""
    from llmlab.adapt.lora import read_adapter_config

    path = Path(path)
    named = read_adapter_config(path).get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        raise CheckpointError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path.")
    for base in (Path(named), path / named):
        if base.is_dir():
            if (base / ADAPTER_CONFIG).exists():
                raise CheckpointError(f"the base {base} of the adapter {path} is an adapter itself; merge it first "
                                      f"(llmlab merge) and name the merged checkpoint as the base.")
            return base
    raise CheckpointError(f"{path / ADAPTER_CONFIG} names the base {named!r}, which is not a local directory.")


def load_with_adapter(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None) -> Model:
    """The base an adapter directory names, with the adapter applied (unmerged; llmlab.adapt.lora.merge folds it)."""
    from llmlab.adapt.lora import load_adapter

    path = Path(path)
    base = adapter_base(path)
    model = load(base, dtype=dtype, device=device)
    load_adapter(model, path, base=str(base))
    if (path / TOKENIZER_FILE).exists():
        model.tokenizer = load_tokenizer(path)
    return model.eval()


def save(model: Model, path: str | os.PathLike, format: str = "llmlab",
         tokenizer_file: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Save a model as an llmlab checkpoint (default) or as a Hugging Face directory (format="hf"); an existing
    non-empty path needs overwrite=True, which replaces only the checkpoint's files in it."""
    generation = model.generation_config.to_hf() if model.generation_config is not None else None
    if format == "llmlab":
        return save_llmlab(model, path, tokenizer_file=tokenizer_file, overwrite=overwrite, generation=generation)
    if format == "hf":
        return save_hf(model, path, tokenizer_file=tokenizer_file, overwrite=overwrite, generation=generation)
    raise ConfigError(f"Unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}.")


def convert(source: str | os.PathLike, target: str | os.PathLike, to: str = "hf", overwrite: bool = False) -> Path:
    """Convert a checkpoint directory to the other format (tokenizer.json travels along)."""
    if Path(target).resolve() == Path(source).resolve():
        raise ConfigError(f"convert would overwrite its input {source}; choose another output directory.")
    check_output_directory(target, overwrite)  # before the slow load
    model = load(source)
    tokenizer = Path(source) / TOKENIZER_FILE
    return save(model, target, format=to, tokenizer_file=tokenizer if tokenizer.exists() else None,
                overwrite=overwrite)
