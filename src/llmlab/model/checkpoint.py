"""The native checkpoint format: a directory with llmlab.json, model.safetensors and (optionally) tokenizer.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError
from llmlab.files import follow_umask
from llmlab.model.config import ModelConfig
from llmlab.model.hf.weights import check_shapes
from llmlab.model.transformer import Model

FORMAT_VERSION = 1
CONFIG_FILE = "llmlab.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
GENERATION_CONFIG_FILE = "generation_config.json"


# what a checkpoint directory of either format holds: overwriting replaces these and leaves the user's other files
CHECKPOINT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, "config.json", "tokenizer_config.json",
                              "special_tokens_map.json", GENERATION_CONFIG_FILE, "model.safetensors.index.json"})
WEIGHT_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def is_checkpoint_file(name: str) -> bool:
    """Whether a file of this name belongs to a checkpoint (llmlab or Hugging Face, sharded weights too)."""
    return name in CHECKPOINT_FILES or WEIGHT_SHARD.fullmatch(name) is not None


def check_output_directory(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise CheckpointError when path is a file, or a non-empty directory that overwrite does not allow replacing."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} is a file, not a checkpoint directory; choose another output directory.")
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise CheckpointError(f"{target} already exists and is not empty; choose another output directory or "
                              f"replace the checkpoint in it (--overwrite, overwrite=True).")


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces path only once everything in it is written.

    An existing non-empty path needs overwrite; even then only its checkpoint files are replaced, others stay.
    """
    target = Path(path)
    check_output_directory(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for file in staging.iterdir():
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        follow_umask(staging)
        move_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def move_into_place(staging: Path, target: Path) -> None:
    """Rename staging onto target; when target also holds files of the user's, replace only the checkpoint's."""
    existing = list(target.iterdir()) if target.is_dir() else []
    if not existing:
        os.replace(staging, target)  # onto an empty directory too
        return
    staged = {entry.name for entry in staging.iterdir()}
    ours = [entry for entry in existing if entry.name in staged or is_checkpoint_file(entry.name)]
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    if len(ours) == len(existing):
        os.replace(target, old / target.name)
        os.replace(staging, target)
    else:
        for entry in ours:
            os.replace(entry, old / entry.name)
        for name in staged:
            os.replace(staging / name, target / name)
    shutil.rmtree(old)


def state_for_saving(model: Model) -> dict[str, torch.Tensor]:
    """The model's tensors, with a tied head stored once (as the token embedding)."""
    state = model.state_dict()
    if model.config.lm_head and model.config.tie_embeddings:
        state.pop("head.weight")
    return {k: v.detach().contiguous() for k, v in state.items()}


def expected_shapes(model: Model) -> dict[str, torch.Size]:
    """Shapes of the tensors a checkpoint must provide for this model."""
    return {k: v.shape for k, v in state_for_saving(model).items()}


def write_config_header(model: Model, directory: Path, metadata: dict) -> None:
    """Write llmlab.json (the model's config and metadata) into directory, without the weights."""
    header = {"format": "llmlab", "version": FORMAT_VERSION, "config": model.config.to_dict(), "metadata": metadata}
    (directory / CONFIG_FILE).write_text(json.dumps(header, indent=2))


def save_llmlab(model: Model, path: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
                metadata: dict | None = None, overwrite: bool = False, generation: dict | None = None) -> Path:
    """Write model (and tokenizer_file, else model.tokenizer; generation as generation_config.json) to an llmlab
    checkpoint directory, atomically (see atomic_directory)."""
    with atomic_directory(path, overwrite) as staging:
        write_config_header(model, staging, metadata or {})
        save_file(state_for_saving(model), staging / WEIGHTS_FILE, metadata={"format": "pt"})
        write_tokenizer(model, tokenizer_file, staging)
        if generation:
            (staging / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2))
    return Path(path)


def write_tokenizer(model: Model, tokenizer_file: str | os.PathLike | None, directory: Path) -> bool:
    """Copy tokenizer_file (else write model.tokenizer) into directory as tokenizer.json; whether there was one."""
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, directory / TOKENIZER_FILE)
    elif model.tokenizer is not None:
        (directory / TOKENIZER_FILE).write_text(model.tokenizer.to_str(pretty=True))
    return (directory / TOKENIZER_FILE).exists()


def read_llmlab_config(path: Path) -> tuple[ModelConfig, dict]:
    """The ModelConfig and metadata stored in llmlab.json."""
    try:
        header = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path / CONFIG_FILE} is not readable JSON ({error}).") from None
    if not isinstance(header, dict) or header.get("format") != "llmlab" or "config" not in header:
        raise CheckpointError(f"{path / CONFIG_FILE} is not an llmlab checkpoint header.")
    return ModelConfig.from_dict(header["config"], where=str(path / CONFIG_FILE)), header.get("metadata", {})


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a corrupt or missing file into a CheckpointError."""
    try:
        return load_file(file)
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointError(f"{file} cannot be read as safetensors ({error}).") from None


def load_state(model: Model, state: dict[str, torch.Tensor], where: str) -> Model:
    """Copy a checked state dict (tied head absent) into the model."""
    check_shapes(state, expected_shapes(model), where)
    model.load_state_dict(state, strict=False)
    return model


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], where: str,
                     dtype: torch.dtype | None = None, device=None) -> Model:
    """A Model that takes over a checked state dict's tensors (cast to dtype, float32 by default) without copying."""
    with torch.device("meta"):
        model = Model(config)
    check_shapes(state, expected_shapes(model), where)
    dtype, device = dtype or torch.float32, torch.device(device or "cpu")
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.materialize_buffers(device)
    return model


def load_llmlab(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None) -> Model:
    """Read an llmlab checkpoint directory into a Model."""
    path = Path(path)
    config, _ = read_llmlab_config(path)
    return model_from_state(config, read_safetensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE), dtype, device)
