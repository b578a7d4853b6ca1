"""Files and directories llmlab writes get the permissions the user's umask gives (tempfile makes them private)."""

from __future__ import annotations

import os
from pathlib import Path


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
