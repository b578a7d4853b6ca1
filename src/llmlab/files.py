"""Files llmlab reads and writes: JSON objects read with one clear error, and files and directories written with the
permissions the user's umask gives (tempfile makes them private)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmlab.errors import CheckpointError, LlmlabError


def read_json_object(file: str | os.PathLike, error: type[LlmlabError] = CheckpointError) -> dict:
    """The JSON object in file, or error (a one-sentence LlmlabError) when it is unreadable or not an object."""
    try:
        values = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as reason:
        raise error(f"{file} is not readable JSON ({reason}).") from None
    if not isinstance(values, dict):
        raise error(f"{file} does not hold a JSON object.")
    return values


def read_yaml(path: str | os.PathLike, kind: str = "recipe") -> object:
    """The YAML document in path; a ConfigError naming the kind of file (recipe, experiment) when it cannot be read
    or parsed."""
    import yaml

    from llmlab.errors import ConfigError

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"the {kind} {path} cannot be read ({error.strerror}).") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"the {kind} {path} is not valid YAML ({str(error).splitlines()[0]}).") from None


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file, or a directory and everything below it, the modes a plain open() or mkdir() would have."""
    mask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in paths:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
