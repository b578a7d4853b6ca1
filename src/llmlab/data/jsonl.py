"""Robust JSONL reading and atomic writing for the data pipeline's standalone commands.

A line is one JSON object with a string field holding the document's text (default "text").
It becomes a document `{"text": ..., "meta": {every other field}}`; writing puts the fields back.
Lines that are not valid UTF-8, not valid JSON, not an object, or lack the text field are
skipped and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.data.paths import Location, atomic_path, location
from llmlab.data.sources import open_binary, read_errors
from llmlab.errors import DataError

Document = dict


@dataclass
class ReadCounts:
    """How many lines a reader saw, and why it skipped the ones it skipped."""

    lines: int = 0
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """The counts as plain JSON-serialisable values."""
        return {"lines": self.lines, "documents": self.documents, "skipped": dict(self.skipped)}


def check_readable(path: str | os.PathLike | Location) -> Location:
    """Return PATH (a path or an fsspec URL) as a Path or RemotePath, or raise DataError if it is not a readable
    file."""
    path = location(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist or is not a file.")
    return path


def read_records(path: str | os.PathLike | Location, counts: ReadCounts | None = None) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL (or .jsonl.gz, .jsonl.zst) file (a path or an fsspec URL), skipping and
    counting bad lines."""
    path = check_readable(path)
    counts = counts if counts is not None else ReadCounts()
    errors = read_errors(path)
    with open_binary(path) as stream:
        try:
            for raw in stream:
                if not raw.strip():
                    continue
                counts.lines += 1
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    counts.skipped["invalid_utf8"] += 1
                    continue
                except ValueError:
                    counts.skipped["invalid_json"] += 1
                    continue
                if not isinstance(record, dict):
                    counts.skipped["not_an_object"] += 1
                    continue
                yield record
        except errors as error:  # a truncated or corrupt .gz or .zst
            raise DataError(f"cannot read {path}: {error}.") from error


def read_documents(path: str | os.PathLike | Location, counts: ReadCounts | None = None, text_field: str = "text") -> Iterator[Document]:
    """Yield documents {"text", "meta"} from a JSONL file; lines without a string text field are skipped and counted."""
    counts = counts if counts is not None else ReadCounts()
    for record in read_records(path, counts):
        text = record.pop(text_field, None)
        if not isinstance(text, str):
            counts.skipped["missing_text"] += 1
            continue
        counts.documents += 1
        yield {"text": text, "meta": record}


def document_to_record(document: Document, text_field: str = "text") -> dict:
    """The JSON object for a document: its text field followed by its metadata fields."""
    return {text_field: document["text"], **document.get("meta", {})}


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """Open a text file for writing that appears at PATH only if the block finishes without error."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise DataError(f"output directory {directory} does not exist.")
    if path.is_dir():
        raise DataError(f"output {path} is a directory; give a file name for the output.")
    with atomic_path(path) as staging, open(staging, "w", encoding="utf-8", newline="\n") as stream:
        yield stream


def write_documents(path: str | os.PathLike, documents: Iterable[Document], text_field: str = "text") -> int:
    """Write documents as JSONL atomically and return how many were written."""
    written = 0
    with atomic_writer(path) as stream:
        for document in documents:
            stream.write(json.dumps(document_to_record(document, text_field), ensure_ascii=False) + "\n")
            written += 1
    return written


def map_jsonl(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    process: Callable[[Iterator[Document]], Iterable[Document]],
    text_field: str = "text",
) -> dict:
    """Stream SOURCE's documents through PROCESS into DESTINATION (atomically); return the line and document counts."""
    counts = ReadCounts()
    check_readable(source)
    written = write_documents(destination, process(read_documents(source, counts, text_field)), text_field)
    return {**counts.as_dict(), "written": written}
