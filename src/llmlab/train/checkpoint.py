"""Training checkpoints: DIR/step-N/ holds the model (llmlab format, safetensors) and train_state.pt (optimiser,
scheduler, RNG states, data position), written atomically; the newest complete one is where a run resumes."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from llmlab.errors import CheckpointError
from llmlab.model.checkpoint import (
    CONFIG_FILE, WEIGHTS_FILE, atomic_directory, load_state, read_llmlab_config, read_safetensors, save_llmlab,
)  # fmt: skip
from llmlab.model.transformer import Model

STATE_FILE = "train_state.pt"
STEP_DIRECTORY = re.compile(r"step-(\d+)")


def checkpoint_steps(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = STEP_DIRECTORY.fullmatch(path.name)
        if match and all((path / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under directory, or None."""
    steps = checkpoint_steps(directory)
    return steps[-1][1] if steps else None


def save_checkpoint(directory: str | os.PathLike, step: int, model: Model, state: dict,
                    tokenizer_file: str | os.PathLike | None = None, keep_last: int | None = None) -> Path:
    """Write DIR/step-N atomically, then delete all but the keep_last newest checkpoints."""
    path = Path(directory) / f"step-{step}"
    try:
        with atomic_directory(path) as staging:
            save_llmlab(model, staging, tokenizer_file=tokenizer_file, metadata={"step": step})
            torch.save(state, staging / STATE_FILE)
    except OSError as error:
        message = f"writing the checkpoint {path} failed ({error}); the previous ones are intact."
        raise CheckpointError(message) from None
    if keep_last:
        for _, old in checkpoint_steps(directory)[:-keep_last]:
            remove_directory(old)
    return path


def remove_directory(path: Path) -> None:
    """Delete a directory, first renaming it so that a half-deleted one never looks complete."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed)


def remove_stale_temporaries(directory: str | os.PathLike, name: str = "step-*") -> None:
    """Delete the temporary directories a killed run left behind while writing or deleting `name` directories."""
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.glob(f".{name}.*"):
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, model: Model) -> dict:
    """Copy the checkpoint's weights into model (whose config must match) and return its training state."""
    path = Path(path)
    config, _ = read_llmlab_config(path)
    if config != model.config:
        differing = [name for name, value in config.to_dict().items() if model.config.to_dict().get(name) != value]
        raise CheckpointError(f"{path} holds a model of another architecture (differing in {', '.join(differing)}).")
    load_state(model, read_safetensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE))
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a truncated or corrupt file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({reason}).") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / STATE_FILE} is not a training state.")
    return state
