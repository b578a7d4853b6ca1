"""Where the data pipeline reads and writes: a plain path stays a pathlib.Path (read and written as always), and any
fsspec URL of another filesystem (s3://, gs://, memory://, …) becomes a `RemotePath`, which offers the small part of
Path's interface the pipeline uses; `file://` URLs are local paths.

Atomicity (`atomic_path`): a local file is written under a temporary name beside it and renamed (os.replace, atomic).
An object store has no rename: an object appears whole when its upload completes, and fsspec's mv is a server-side
copy then a delete. So a file is uploaded under a temporary key and moved onto its own: the final key only ever holds
complete bytes, and a crash between the copy and the delete leaves a temporary that the next run removes
(`remove_stale_temporaries`). A directory cannot appear at once on an object store: writers put its marker file
last. Storage options (credentials, endpoints) come from fsspec's configuration and the environment, as for any
fsspec client; a RemotePath carries its filesystem object to worker processes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from llmlab.errors import ConfigError
from llmlab.files import follow_umask


class RemotePath:
    """A file or directory on a non-local fsspec filesystem, with the part of pathlib.Path the pipeline uses."""

    def __init__(self, filesystem, path: str):
        self.fs, self.path = filesystem, path.rstrip("/") or path

    def __truediv__(self, other: str | os.PathLike) -> RemotePath:
        return RemotePath(self.fs, posixpath.join(self.path, os.fspath(other)))

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        """The last part of the path."""
        return posixpath.basename(self.path)

    @property
    def parent(self) -> RemotePath:
        """The directory holding this path."""
        return RemotePath(self.fs, posixpath.dirname(self.path))

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        """This path below OTHER."""
        return PurePosixPath(self.path).relative_to(other.path)

    def exists(self) -> bool:
        """Whether a file or directory is there."""
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        """Whether a file is there."""
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        """Whether a directory (on an object store: a prefix of some key) is there."""
        return self.fs.isdir(self.path)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Make the directory (and its parents; nothing to do on most object stores)."""
        self.fs.makedirs(self.path, exist_ok=True)

    def open(self, mode: str = "rb", **options):
        """The file opened through fsspec (written files appear when closed)."""
        return self.fs.open(self.path, mode, **options)

    def read_bytes(self) -> bytes:
        """The file's bytes."""
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        """The file's text."""
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write the file (not atomically: see atomic_path)."""
        with self.open("wb") as stream:
            stream.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        """Write the file's text (not atomically: see atomic_path)."""
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the file."""
        if missing_ok and not self.fs.exists(self.path):
            return
        self.fs.rm_file(self.path)

    def iterdir(self) -> Iterator[RemotePath]:
        """The entries directly below this directory."""
        for path in self.fs.ls(self.path, detail=False):
            if path.rstrip("/") != self.path:
                yield RemotePath(self.fs, path)

    def files(self) -> list[RemotePath]:
        """Every file below this directory, sorted."""
        return [RemotePath(self.fs, path) for path in sorted(self.fs.find(self.path))]


Location = Path | RemotePath


def location(path: str | os.PathLike | RemotePath) -> Location:
    """PATH as a Path (a plain path or a file:// URL) or a RemotePath (any other fsspec URL)."""
    if isinstance(path, (Path, RemotePath)):
        return path
    text = os.fspath(path)
    if "://" not in text:
        return Path(text)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        filesystem, inner = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as error:
        raise ConfigError(f"{text} names a filesystem that fsspec cannot open here ({error}).") from None
    return Path(inner) if isinstance(filesystem, LocalFileSystem) else RemotePath(filesystem, inner)


def is_remote(path) -> bool:
    """Whether PATH is on a non-local fsspec filesystem."""
    return isinstance(path, RemotePath)


def local_path(path: str | os.PathLike) -> Path:
    """PATH, a plain path or a file:// URL, as a local path; other filesystems are a ConfigError."""
    place = location(path)
    if isinstance(place, RemotePath):
        raise ConfigError(f"{path} is not on a local or mounted filesystem, which this needs.")
    return place


def version(path: Location) -> str:
    """A string that changes when the file at PATH is rewritten (its mtime; on other filesystems fsspec's ukey)."""
    return str(path.stat().st_mtime_ns) if isinstance(path, Path) else path.fs.ukey(path.path)


def load_array(path: Location):
    """The numpy array in the .npy file at PATH."""
    import numpy as np

    with path.open("rb") as stream:
        return np.load(stream, allow_pickle=False)


def _temporary(path: Location) -> str:
    """The name of a temporary beside PATH, which remove_stale_temporaries recognises."""
    return f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


@contextlib.contextmanager
def atomic_path(path: Location):
    """A temporary file beside PATH, moved onto it if the block finishes (removed if it fails)."""
    if isinstance(path, RemotePath):
        staging = path.parent / _temporary(path)
        try:
            yield staging
            path.fs.mv(staging.path, path.path)
        except BaseException:
            with contextlib.suppress(Exception):
                staging.unlink(missing_ok=True)
            raise
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(temporary)
        follow_umask(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def is_stale_temporary(name: str) -> bool:
    """Whether a file or directory name is a temporary that a killed run left (.NAME.*.tmp, .NAME.old.*)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".old." in name)


def remove_stale_temporaries(directory: Location) -> None:
    """Delete the temporary files and directories a killed run left behind below DIRECTORY."""
    if isinstance(directory, RemotePath):
        if directory.is_dir():
            for path in directory.files():
                if any(is_stale_temporary(part) for part in path.relative_to(directory).parts):
                    path.unlink(missing_ok=True)
        directory.fs.invalidate_cache()  # a listing cached here would hide the files other processes write next
        return
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob(".*"), reverse=True):
        if is_stale_temporary(path.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
