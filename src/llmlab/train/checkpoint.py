"""Training checkpoints: DIR/step-N/ holds the model (llmlab format, safetensors) and train_state.pt (optimiser,
scheduler, RNG states, data position), written atomically; the newest complete one is where a run resumes.

A distributed run writes DIR/step-N/sharded/ instead of model.safetensors: model and optimiser state through
torch.distributed.checkpoint, each rank its own shards, so that any world size (a single process too) reads them back;
train_state.pt then holds the rest, with one RNG state per rank."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from llmlab.errors import CheckpointError
from llmlab.files import follow_umask
from llmlab.model.checkpoint import (
    CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, atomic_directory, expected_shapes, load_state, model_from_state,
    read_llmlab_config, read_safetensors, save_llmlab, write_config_header,
)  # fmt: skip
from llmlab.model.hf.weights import check_shapes
from llmlab.model.transformer import Model
from llmlab.train import distributed

STATE_FILE = "train_state.pt"
MODULE_FILE = "module.safetensors"  # every tensor of a module that is not a plain Model (a head, an adapter)
SHARDED_DIRECTORY = "sharded"
SHARDED_METADATA = ".metadata"  # written last by torch.distributed.checkpoint
STEP_DIRECTORY = re.compile(r"step-(\d+)")


def checkpoint_steps(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = STEP_DIRECTORY.fullmatch(path.name)
        weights = (path / WEIGHTS_FILE).is_file() or (path / MODULE_FILE).is_file() or \
            (path / SHARDED_DIRECTORY / SHARDED_METADATA).is_file()
        if match and weights and (path / CONFIG_FILE).is_file() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under directory, or None."""
    steps = checkpoint_steps(directory)
    return steps[-1][1] if steps else None


def is_plain_model(module: torch.nn.Module) -> bool:
    """Whether module is an llmlab Model with exactly a Model's tensors (not wrapped with a head, nor adapted)."""
    if not isinstance(module, Model):
        return False
    with torch.device("meta"):
        return set(module.state_dict()) == set(Model(module.config).state_dict())


def save_checkpoint(directory: str | os.PathLike, step: int, model: torch.nn.Module, state: dict,
                    tokenizer_file: str | os.PathLike | None = None, keep_last: int | None = None) -> Path:
    """Write DIR/step-N atomically, then delete all but the keep_last newest checkpoints. A module that is not a plain
    Model (a reward or value head around one, a LoRA-adapted one; it has the Model's .config) keeps all its tensors
    in module.safetensors beside llmlab.json, for resuming (its final form is written by whoever trains it)."""
    path = Path(directory) / f"step-{step}"
    try:
        with atomic_directory(path, overwrite=True) as staging:  # step-N is the run's own
            if is_plain_model(model):
                save_llmlab(model, staging, tokenizer_file=tokenizer_file, metadata={"step": step})
            else:
                from safetensors.torch import save_model as save_module

                write_config_header(model, staging, {"step": step})
                save_module(model, str(staging / MODULE_FILE))  # shared (tied) tensors stored once
                if tokenizer_file is not None:
                    shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)
            torch.save(state, staging / STATE_FILE)
    except OSError as error:
        message = f"writing the checkpoint {path} failed ({error}); the previous ones are intact."
        raise CheckpointError(message) from None
    remove_old_checkpoints(directory, keep_last)
    return path


def remove_old_checkpoints(directory: str | os.PathLike, keep_last: int | None) -> None:
    """Delete all but the keep_last newest checkpoints (none when keep_last is 0 or None)."""
    if keep_last:
        for _, old in checkpoint_steps(directory)[:-keep_last]:
            remove_directory(old)


def save_sharded_checkpoint(directory: str | os.PathLike, step: int, model: Model, optimizer: torch.optim.Optimizer,
                            state: dict, tokenizer_file: str | os.PathLike | None = None,
                            keep_last: int | None = None) -> Path:
    """Write DIR/step-N from every rank of a distributed run: the ranks' shards into a temporary directory that
    rank 0 names, then rank 0's llmlab.json, tokenizer.json and train_state.pt, then rank 0 renames it into place
    once every rank has written (the last barrier), and deletes all but the keep_last newest. Collective."""
    directory = Path(directory)
    path = directory / f"step-{step}"
    staging = None
    if distributed.is_main():
        directory.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=directory)
    staging = Path(distributed.broadcast(staging))
    from torch.distributed.checkpoint import CheckpointException  # slow to import: only where sharded

    failure = None
    try:
        distributed.save_sharded(staging / SHARDED_DIRECTORY, model, optimizer)
        if distributed.is_main():
            write_config_header(model, staging, {"step": step})
            if tokenizer_file is not None:
                shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)
            torch.save(state, staging / STATE_FILE)
            for file in (CONFIG_FILE, STATE_FILE):
                with open(staging / file, "rb") as handle:
                    os.fsync(handle.fileno())
    except (OSError, CheckpointException) as error:
        failure = str(error).splitlines()[0] if str(error) else type(error).__name__
    failures = [reason for reason in distributed.gather(failure) if reason is not None]
    if distributed.is_main():
        if failures:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            if path.exists():
                remove_directory(path)
            follow_umask(staging)
            os.replace(staging, path)
            remove_old_checkpoints(directory, keep_last)
    distributed.barrier()
    if failures:
        raise CheckpointError(f"writing the checkpoint {path} failed ({failures[0]}); the previous ones are intact.")
    return path


def save_model(model: Model, path: str | os.PathLike, tokenizer_file: str | os.PathLike | None = None,
               metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write model as an llmlab checkpoint directory for llmlab.load (see save_llmlab for overwrite); in a
    distributed run rank 0 writes it, a sharded model first gathered whole onto rank 0's CPU (collective)."""
    if not distributed.is_distributed():
        return save_llmlab(model, path, tokenizer_file, metadata, overwrite)
    if distributed.is_sharded(model):
        state = distributed.full_model_state(model)
        if distributed.is_main():
            if model.config.lm_head and model.config.tie_embeddings:
                state.pop("head.weight", None)
            save_llmlab(model_from_state(model.config, state, str(path)), path, tokenizer_file, metadata, overwrite)
    elif distributed.is_main():
        save_llmlab(model, path, tokenizer_file, metadata, overwrite)
    distributed.barrier()
    return Path(path)


def remove_directory(path: Path) -> None:
    """Delete a directory, first renaming it so that a half-deleted one never looks complete."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, doomed / path.name)
    shutil.rmtree(doomed)


def remove_stale_temporaries(directory: str | os.PathLike, name: str = "step-*") -> None:
    """Delete the temporary directories a killed run left behind while writing or deleting `name` directories."""
    directory = Path(directory)
    if directory.is_dir() and distributed.is_main():
        for path in directory.glob(f".{name}.*"):
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike, model: Model, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Copy the checkpoint's weights into model (whose config must match) and return its training state.

    A sharded checkpoint is read at this run's world size (a single process too), into optimizer as well when one is
    given (its state is then absent from the returned dict); a single-process checkpoint's optimizer state is in
    the returned dict. Collective when model is sharded or the checkpoint is.
    """
    path = Path(path)
    config, _ = read_llmlab_config(path)
    if config != model.config:
        differing = [name for name, value in config.to_dict().items() if model.config.to_dict().get(name) != value]
        raise CheckpointError(f"{path} holds a model of another architecture (differing in {', '.join(differing)}).")
    if (path / SHARDED_DIRECTORY).is_dir():
        from torch.distributed.checkpoint import CheckpointException  # slow to import: only where sharded

        try:
            distributed.load_sharded(path / SHARDED_DIRECTORY, model, optimizer)
        except (CheckpointException, OSError, RuntimeError, KeyError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{path / SHARDED_DIRECTORY} cannot be read ({reason}).") from None
    elif distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        weights = read_safetensors(path / WEIGHTS_FILE)
        with torch.device("meta"):
            check_shapes(weights, expected_shapes(Model(model.config)), str(path / WEIGHTS_FILE))
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    elif (path / MODULE_FILE).is_file() or not is_plain_model(model):
        from safetensors.torch import load_model as load_module

        try:
            load_module(model, str(path / MODULE_FILE), strict=True)
        except (OSError, RuntimeError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{path} does not hold this run's model with its heads or adapter ({reason}).") \
                from None
    else:
        load_state(model, read_safetensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE))
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a truncated or corrupt file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path / STATE_FILE} cannot be read ({reason}).") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / STATE_FILE} is not a training state.")
    return state
