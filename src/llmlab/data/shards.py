"""Token shards: documents' token ids in flat little-endian files that are memory-mapped for training.

A shard directory holds index.json (written last, atomically: a directory without it is incomplete),
usually the tokenizer.json its ids come from, and per shard NAME.tokens (each document's ids followed by
the end-of-text id, uint16 when vocab_size <= 65536 else uint32) and NAME.docs (int64 start offsets of
its documents within the shard). The index records every file's size and SHA-256, so a truncated or
foreign file is refused by size when opened and by content with TokenShards.verify().
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llmlab.data.paths import atomic_path, location
from llmlab.data.tokenizer import END_OF_TEXT, TOKENIZER_FILE
from llmlab.errors import DataError
from llmlab.files import follow_umask

INDEX_FILE = "index.json"
FORMAT = "llmlab-token-shards"
VERSION = 1
TOKENS_SUFFIX, DOCS_SUFFIX = ".tokens", ".docs"
OFFSET_DTYPE = np.dtype("<i8")
CHUNK_TOKENS = 1 << 20  # tokens buffered before a write, so memory stays bounded whatever the documents


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned type holding every id below vocab_size: uint16 or uint32."""
    if not 0 < vocab_size <= 2**32:
        raise DataError(f"vocab_size {vocab_size} cannot be stored in token shards (1 to 2**32 ids).")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class _HashedFile:
    """A binary file being written that counts its bytes and hashes them."""

    def __init__(self, path):
        self.handle, self.sha256, self.bytes = path.open("wb"), hashlib.sha256(), 0

    def write(self, array: np.ndarray) -> None:
        data = array.tobytes()
        self.handle.write(data)
        self.sha256.update(data)
        self.bytes += len(data)


def write_shard(directory: str | os.PathLike, name: str, documents: Iterable[Sequence[int]], dtype,
                eos_token_id: int) -> dict:
    """Write NAME.tokens and NAME.docs (each atomically) from documents of token ids into DIRECTORY (a path or an
    fsspec URL); return the index entry."""
    directory, dtype = location(directory), np.dtype(dtype).newbyteorder("<")
    directory.mkdir(parents=True, exist_ok=True)
    limit = np.iinfo(dtype).max
    if not 0 <= eos_token_id <= limit:
        raise DataError(f"eos_token_id {eos_token_id} does not fit the shard's {dtype.name} tokens.")
    token_path, docs_path = directory / (name + TOKENS_SUFFIX), directory / (name + DOCS_SUFFIX)
    with atomic_path(token_path) as token_staging, atomic_path(docs_path) as docs_staging:
        tokens, starts = _HashedFile(token_staging), _HashedFile(docs_staging)
        buffer: list[np.ndarray] = []
        buffered = documents_written = 0
        with tokens.handle, starts.handle:
            for document in documents:
                ids = np.asarray(document, dtype=np.int64)
                if ids.size and (ids.min() < 0 or ids.max() > limit):
                    raise DataError(f"document {documents_written} of shard {name} holds a token id outside "
                                    f"0..{limit}, which {dtype.name} cannot store.")
                starts.write(np.array([tokens.bytes // dtype.itemsize + buffered], dtype=OFFSET_DTYPE))
                buffer += [ids.astype(dtype), np.array([eos_token_id], dtype=dtype)]
                buffered += ids.size + 1
                documents_written += 1
                if buffered >= CHUNK_TOKENS:
                    tokens.write(np.concatenate(buffer))
                    buffer, buffered = [], 0
            if buffer:
                tokens.write(np.concatenate(buffer))
    return {"name": name, "tokens": tokens.bytes // dtype.itemsize, "documents": documents_written,
            "tokens_bytes": tokens.bytes, "tokens_sha256": tokens.sha256.hexdigest(),
            "docs_bytes": starts.bytes, "docs_sha256": starts.sha256.hexdigest()}


def write_index(directory: str | os.PathLike, entries: list[dict], vocab_size: int, eos_token_id: int,
                **metadata) -> Path:
    """Write index.json atomically (last, once every shard is in place) into DIRECTORY (a path or an fsspec URL) and
    return its path."""
    path = location(directory) / INDEX_FILE
    index = {"format": FORMAT, "version": VERSION, "dtype": token_dtype(vocab_size).name, "vocab_size": vocab_size,
             "eos_token_id": eos_token_id, "tokens": sum(entry["tokens"] for entry in entries),
             "documents": sum(entry["documents"] for entry in entries), "shards": list(entries), **metadata}
    with atomic_path(path) as staging:
        staging.write_text(json.dumps(index, indent=1) + "\n")
    return path


class ShardWriter:
    """Writes documents into shards of about shard_tokens tokens each (a document is never split); close()
    writes the index. For one writing process; a crash leaves no index, so nothing half-written is trusted."""

    def __init__(self, directory: str | os.PathLike, vocab_size: int, eos_token_id: int,
                 shard_tokens: int = 1 << 28, prefix: str = "shard", **metadata):
        if shard_tokens < 1:
            raise DataError(f"shard_tokens must be at least 1, not {shard_tokens}.")
        self.directory, self.vocab_size, self.eos_token_id = Path(directory), vocab_size, eos_token_id
        self.dtype, self.shard_tokens = token_dtype(vocab_size), shard_tokens
        self.prefix, self.metadata = prefix, metadata
        self.entries: list[dict] = []
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0

    def add(self, ids: Sequence[int]) -> None:
        """Append one document's ids (the end-of-text id is added); roll to a new shard once this one is full."""
        ids = np.asarray(ids, dtype=np.int64)
        self.pending.append(ids)
        self.pending_tokens += ids.size + 1
        if self.pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        name = f"{self.prefix}-{len(self.entries):05d}"
        self.entries.append(write_shard(self.directory, name, self.pending, self.dtype, self.eos_token_id))
        self.pending, self.pending_tokens = [], 0

    def close(self) -> Path:
        """Write the last shard and then the index; return the index's path."""
        if self.pending or not self.entries:
            self._flush()
        return write_index(self.directory, self.entries, self.vocab_size, self.eos_token_id, **self.metadata)


def tokenize_to_shards(texts: Iterable[str], tokenizer, directory: str | os.PathLike, shard_tokens: int = 1 << 28,
                       batch_documents: int = 1024, progress: bool = False, **metadata) -> Path:
    """Encode texts with a tokenizers.Tokenizer into a new shard directory (tokenizer.json copied in); the
    directory appears whole, by a rename, or not at all. Returns its index's path."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise DataError(f"the shard directory {directory} already exists; choose a new one.")
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    if end_of_text is None:
        raise DataError(f"the tokenizer has no {END_OF_TEXT} token to end each document with.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        writer = ShardWriter(staging, tokenizer.get_vocab_size(), end_of_text, shard_tokens, **metadata)
        texts = iter(texts)
        with tqdm(desc="tokenize", unit=" documents", disable=not progress) as bar:
            while batch := list(itertools.islice(texts, batch_documents)):
                for encoding in tokenizer.encode_batch(batch):
                    writer.add(encoding.ids)
                bar.update(len(batch))
        tokenizer.save(str(staging / TOKENIZER_FILE))
        writer.close()
        if directory.exists():
            directory.rmdir()
        follow_umask(staging)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory / INDEX_FILE


def _memmap(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """The file as a read-only array of count items (numpy cannot map an empty file)."""
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype=dtype)


class TokenShards:
    """A shard directory opened for reading: one token stream over its shards, memory-mapped."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if self.directory.is_file():
            raise DataError(f"{self.directory} is a file, not a shard directory; make one from it with "
                            f"`llmlab data tokenize {self.directory} --tokenizer T --out DIR`.")
        if not self.directory.is_dir():
            raise DataError(f"the shard directory {self.directory} does not exist.")
        if not index_path.is_file():
            raise DataError(f"{self.directory} has no {INDEX_FILE}: it is not a shard directory or was not finished.")
        try:
            index = json.loads(index_path.read_text())
            self.vocab_size, self.eos_token_id = int(index["vocab_size"]), int(index["eos_token_id"])
            entries = [(str(e["name"]), int(e["tokens"]), int(e["documents"])) for e in index["shards"]]
            fmt, dtype_name = index["format"], index["dtype"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{index_path} is not a valid shard index ({error!r}).") from None
        if fmt != FORMAT:
            raise DataError(f"{index_path} is not a {FORMAT} index (format {fmt!r}).")
        self.dtype = token_dtype(self.vocab_size)
        if dtype_name != self.dtype.name:
            raise DataError(f"{index_path} says dtype {dtype_name}, but vocab_size {self.vocab_size} needs "
                            f"{self.dtype.name}.")
        self.index = index
        self._shards, self._starts, offsets = [], [], [0]
        for name, tokens, documents in entries:
            self._shards.append(_memmap(self._checked(name + TOKENS_SUFFIX, tokens * self.dtype.itemsize),
                                        self.dtype, tokens))
            self._starts.append(_memmap(self._checked(name + DOCS_SUFFIX, documents * OFFSET_DTYPE.itemsize),
                                        OFFSET_DTYPE, documents))
            offsets.append(offsets[-1] + tokens)
        self._offsets = np.array(offsets, dtype=np.int64)
        self.tokens = int(self._offsets[-1])
        self.documents = sum(documents for _, _, documents in entries)

    def _checked(self, filename: str, size: int) -> Path:
        path = self.directory / filename
        if not path.is_file():
            raise DataError(f"the shard file {path} named in {INDEX_FILE} is missing.")
        if path.stat().st_size != size:
            raise DataError(f"the shard file {path} has {path.stat().st_size} bytes, not the {size} its index "
                            "records (truncated, or from another shard set).")
        return path

    @property
    def tokenizer_file(self) -> Path | None:
        """The directory's tokenizer.json, or None when it has none."""
        path = self.directory / TOKENIZER_FILE
        return path if path.is_file() else None

    def verify(self) -> None:
        """Check every shard file's SHA-256 against the index (reads everything; DataError naming the file)."""
        for entry in self.index["shards"]:
            for suffix, key in ((TOKENS_SUFFIX, "tokens_sha256"), (DOCS_SUFFIX, "docs_sha256")):
                path = self.directory / (entry["name"] + suffix)
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 24), b""):
                        digest.update(block)
                if digest.hexdigest() != entry.get(key):
                    raise DataError(f"the shard file {path} does not match the checksum in its {INDEX_FILE}.")

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the whole stream (across shard boundaries), as a new array."""
        if start < 0 or length < 0 or start + length > self.tokens:
            raise IndexError(f"tokens [{start}, {start + length}) lie outside the {self.tokens} of {self.directory}.")
        pieces, position, end = [], start, start + length
        shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while position < end:
            shard_end = int(self._offsets[shard + 1])
            stop = min(end, shard_end)
            base = int(self._offsets[shard])
            pieces.append(self._shards[shard][position - base:stop - base])
            position, shard = stop, shard + 1
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)

    def document_starts(self) -> np.ndarray:
        """The offset of each document's first token in the whole stream (int64, ascending)."""
        parts = [starts + offset for starts, offset in zip(self._starts, self._offsets[:-1])]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


class TokenArray:
    """An in-memory token stream with TokenShards' reading interface (for tests and small experiments)."""

    def __init__(self, tokens):
        self.array = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self.tokens = int(self.array.size)

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length)."""
        if start < 0 or length < 0 or start + length > self.tokens:
            raise IndexError(f"tokens [{start}, {start + length}) lie outside the {self.tokens} of the array.")
        return self.array[start:start + length].copy()
