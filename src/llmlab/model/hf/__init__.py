"""Hugging Face interop: per family, config translation plus a weight-name map; nothing else."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.files import read_json_object
from llmlab.model.config import ModelConfig
from llmlab.model.hf.weights import Rule, to_hf, to_llmlab

FAMILY_MODULES = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "opt", "bloom", "llama", "falcon", "mpt", "t5", "bert")


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model family maps onto ModelConfig and llmlab tensor names."""

    model_types: tuple[str, ...]
    config_from_hf: Callable[[dict], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict]
    weight_rules: Callable[[ModelConfig], list[Rule]]
    ignore: tuple[str, ...] = field(default_factory=tuple)
    base_prefix: str = ""
    # (config, HF state) -> both adjusted to optional parts only the tensors reveal (e.g. whether BERT has a pooler)
    from_checkpoint: Callable[[ModelConfig, dict], tuple[ModelConfig, dict]] | None = None


def families() -> dict[str, Family]:
    """Every registered family, keyed by Hugging Face model_type."""
    registry = {}
    for name in FAMILY_MODULES:
        try:
            module = importlib.import_module(f"llmlab.model.hf.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"llmlab.model.hf.{name}":
                continue
            raise
        for family in getattr(module, "FAMILIES", ()):
            for model_type in family.model_types:
                registry[model_type] = family
    return registry


def family_for(config: ModelConfig | dict) -> Family:
    """The family of an HF config dict (by model_type) or of a ModelConfig (by its family field)."""
    model_type = config.get("model_type") if isinstance(config, dict) else config.family
    registry = families()
    if model_type not in registry:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"Model type {model_type!r} is not supported; supported types: {known}.")
    return registry[model_type]


def read_hf_config(path: Path) -> dict:
    """The config.json of a Hugging Face directory."""
    return read_json_object(path / "config.json")


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory: (sharded) safetensors, else (sharded) pytorch_model.bin."""
    from llmlab.model.checkpoint import read_safetensors

    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch_bin)):
        index_file = path / index_name
        if index_file.exists():
            try:
                shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError, AttributeError) as error:
                raise CheckpointError(f"{index_file} is not a valid shard index ({error}).") from None
            state = {}
            for shard in shards:
                state.update(reader(path / shard))
            return state
    if (path / "model.safetensors").exists():
        return read_safetensors(path / "model.safetensors")
    if (path / "pytorch_model.bin").exists():
        return _read_torch_bin(path / "pytorch_model.bin")
    raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin.")


def _read_torch_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe pickles
        raise CheckpointError(f"{file} cannot be read safely as a PyTorch state dict ({error}).") from None


def load_hf(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None):
    """Read a Hugging Face model directory (config.json + weights) into an llmlab Model."""
    from llmlab.model.checkpoint import expected_shapes, model_from_state
    from llmlab.model.transformer import Model

    path = Path(path)
    hf_config = read_hf_config(path)
    family = family_for(hf_config)
    config = family.config_from_hf(hf_config)
    hf_state = read_hf_weights(path)
    if family.base_prefix and not any(k.startswith(family.base_prefix) for k in hf_state):
        hf_state = {family.base_prefix + k: v for k, v in hf_state.items()}
    if family.from_checkpoint is not None:
        config, hf_state = family.from_checkpoint(config, hf_state)
    with torch.device("meta"):
        expected = expected_shapes(Model(config))
    state = to_llmlab(family.weight_rules(config), hf_state, config, expected, family.ignore, where=str(path))
    return model_from_state(config, state, str(path), dtype, device)


def save_hf(model, path: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
            overwrite: bool = False, generation: dict | None = None) -> Path:
    """Write a model and its tokenizer as a directory that transformers' from_pretrained and AutoTokenizer load."""
    from safetensors.torch import save_file

    from llmlab.model.checkpoint import TOKENIZER_FILE, atomic_directory, state_for_saving, write_tokenizer
    from llmlab.model.hf.tokenizer import generation_config, tokenizer_files

    config = model.config
    family = family_for(config)
    hf_state = to_hf(family.weight_rules(config), state_for_saving(model), config)
    files = {"config.json": family.config_to_hf(config)}
    if config.has_decoder:
        files["generation_config.json"] = {**generation_config(config), **(generation or {})}
    with atomic_directory(path, overwrite) as staging:
        if write_tokenizer(model, tokenizer_file, staging):
            files.update(tokenizer_files(config, staging / TOKENIZER_FILE))
        for name, content in files.items():
            (staging / name).write_text(json.dumps(content, indent=2))
        save_file(hf_state, staging / "model.safetensors", metadata={"format": "pt"})
    return Path(path)
