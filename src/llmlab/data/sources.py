"""The pretraining pipeline's sources of documents: text files, JSONL, Parquet, Hugging Face datasets, the demo corpus.

A source (`SourceConfig`) is cut into units (`SourceUnit`): one per file, one per range of row groups of a big
Parquet file, one per row range of a saved Hugging Face dataset, one per shard (`IterableDataset.num_shards`, i.e.
per data file) of a streamed one, one for the bundled corpus. Units are listed in a deterministic order (sorted
paths; hidden files and directories left out), so a pipeline can read them in parallel and resume unit by unit.
Format "auto" goes by suffix once .gz/.zst/.zstd is stripped: .jsonl/.ndjson are JSONL, .parquet/.pq Parquet,
anything else text; a directory written by `save_to_disk` is a Hugging Face dataset. Every document is `{"text": str,
"meta": {...}}`; meta names the source, the path and the position (`line` 1-based as in an editor; `block`,
`row` 0-based), and keeps a JSONL record's or a table row's other fields (a field whose name clashes with
these is kept as NAME_field).

Memory stays bounded whatever the input: files are read in chunks of at most a few times max_document_chars
bytes, never a whole line or file at once. Bad input never stops a run; it is skipped or repaired and counted:
- skipped_binary: a text or JSONL file whose first 8 KiB hold a NUL byte or over 10% invalid UTF-8 bytes;
- skipped_empty: a file holding nothing but whitespace, or a document whose text is only whitespace;
- replaced_invalid_utf8: a kept document whose input had invalid UTF-8, each bad byte replaced by U+FFFD;
- skipped_invalid_json: a JSONL line that is not a JSON object;
- skipped_missing_text: a record or row whose text field is absent or not a string;
- skipped_long_line: a JSONL line longer than max_line_bytes (a JSON object cannot be parsed from a prefix);
- truncated: a document longer than max_document_chars, cut to that length (a JSONL record, a row, a blank-line
  block); a text file read whole (split_by "file") is never cut: a longer one becomes consecutive parts instead, each
  ending at a line end where it can, with meta `part` (0-based).
A path that matches nothing, an unknown format or text column, or a corrupt compressed or Parquet file is a
DataError naming it.
"""

from __future__ import annotations

import codecs
import functools
import glob
import gzip
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.data.paths import Location, RemotePath, location
from llmlab.errors import DataError

FORMATS = ("auto", "text", "jsonl", "parquet", "hf", "bundled")
SPLIT_MODES = ("file", "blank_line")
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SNIFF_BYTES = 8192
BINARY_INVALID_FRACTION = 0.1
LINE_CHUNK_BYTES = 1 << 20
ROW_BATCH = 1024
# invalid bytes decoded with "surrogateescape" become lone surrogates, which valid UTF-8 never yields
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(frozen=True)
class SourceConfig:
    """Where one source's documents come from and how to read them."""

    path: str  # a file, a directory (recursed, sorted), a glob; "hf": a hub name or local dataset dir; "bundled"
    format: str = "auto"  # auto: by suffix after stripping .gz/.zst/.zstd; a saved HF dataset dir is "hf"
    text_field: str = "text"  # jsonl / parquet / hf: the field holding the text; the others go to meta
    split_by: str = "file"  # text files: one document per "file" or per "blank_line"-separated block
    name: str | None = None  # recorded in meta; default derived from path
    hf_split: str = "train"
    hf_config: str | None = None
    streaming: bool = True  # hf hub names and data-file dirs: stream instead of downloading and converting
    max_document_chars: int = 1_000_000  # longer documents are truncated (counted); longer text files split in parts
    max_line_bytes: int | None = None  # jsonl: longer lines are skipped (counted); None: 8 x max_document_chars + 1 MiB
    rows_per_unit: int = 100_000  # parquet: row groups are grouped into units of about this many rows; saved hf: rows
    bundled_max_chars: int | None = 4_000_000  # bundled: total characters of the demo corpus

    def __post_init__(self):
        if self.format not in FORMATS:
            raise DataError(f"source {self.path}: format {self.format!r} is not one of {', '.join(FORMATS)}.")
        if self.split_by not in SPLIT_MODES:
            raise DataError(f"source {self.path}: split_by {self.split_by!r} is not one of {', '.join(SPLIT_MODES)}.")
        for field_name in ("max_document_chars", "max_line_bytes", "rows_per_unit"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DataError(f"source {self.path}: {field_name} must be a positive integer, not {value!r}.")

    @functools.cached_property
    def source_name(self) -> str:
        """The name recorded in every document's meta."""
        if self.name:
            return self.name
        if self.kind == "bundled":
            return "bundled"
        if glob.has_magic(self.path):
            return Path(_glob_root(self.path)).name or "source"
        base = Path(_strip_suffixes(self.path.rstrip("/\\"))[0])
        return (base.stem if location(self.path).is_file() else base.name) or "source"

    @functools.cached_property
    def kind(self) -> str:
        """The format, with "auto" resolved for the source as a whole ("files" when each file decides)."""
        if self.format != "auto":
            return self.format
        if self.path == "bundled":
            return "bundled"
        if _is_saved_hf_dataset(location(self.path)):
            return "hf"
        return "files"

    @property
    def line_limit(self) -> int:
        """The longest JSONL line read, in bytes."""
        return self.max_line_bytes or 8 * self.max_document_chars + (1 << 20)


@dataclass(frozen=True)
class SourceUnit:
    """The piece of a source one worker reads: a file, a row-group or row range, a dataset shard, the demo corpus."""

    source: SourceConfig
    id: str  # stable, filesystem-safe, unique within the source
    format: str  # text | jsonl | parquet | hf | bundled
    path: str | None = None
    compression: str | None = None  # gzip | zstd
    start: int = 0  # parquet: first row group; saved hf: first row; streamed hf: shard index
    stop: int = 0  # one past the last
    num_shards: int = 1  # streamed hf: how many shards the dataset was cut into


def source_units(config: SourceConfig) -> list[SourceUnit]:
    """Cut a source into units, in a deterministic order."""
    kind = config.kind
    if kind == "bundled":
        return [SourceUnit(config, "bundled", "bundled")]
    if kind == "hf":
        return _hf_units(config)
    units = []
    for root, path in _list_files(config.path):
        file_format, compression = _file_format(path, config.format)
        relative = path.relative_to(root).as_posix() if root else path.name
        unit_id = _unit_id(relative)
        if file_format == "parquet":
            if compression:
                raise DataError(f"Parquet file {path} cannot be read through {compression}; decompress it first.")
            units.extend(_parquet_units(config, path, unit_id))
        else:
            units.append(SourceUnit(config, unit_id, file_format, str(path), compression))
    return units


def read_unit(unit: SourceUnit, counts: Counter) -> Iterator[dict]:
    """Yield the unit's documents {"text", "meta"}, skipping, repairing and truncating bad input (counted)."""
    readers = {
        "text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet, "hf": _read_hf, "bundled": _read_bundled
    }
    limit = unit.source.max_document_chars
    for text, meta, replaced in readers[unit.format](unit, counts):
        if not text or text.isspace():
            counts["skipped_empty"] += 1
            continue
        if len(text) > limit:
            text = text[:limit]
            counts["truncated"] += 1
        if replaced:
            counts["replaced_invalid_utf8"] += 1
        counts["documents"] += 1
        yield {"text": text, "meta": meta}


def read_source(config: SourceConfig, counts: Counter) -> Iterator[dict]:
    """Yield every document of a source, unit after unit."""
    for unit in source_units(config):
        yield from read_unit(unit, counts)


# --- finding files and naming units ---------------------------------------------------------------------------


def _strip_suffixes(name: str) -> tuple[str, str | None]:
    """NAME without its compression suffix, and the compression it names."""
    for suffix, compression in COMPRESSION_SUFFIXES.items():
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], compression
    return name, None


def _file_format(path: Path, configured: str) -> tuple[str, str | None]:
    """A file's format (by its suffix when configured is "auto") and its compression."""
    name, compression = _strip_suffixes(path.name)
    if configured != "auto":
        return configured, compression
    name = name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet", compression
    return "text", compression


def _glob_root(pattern: str) -> str:
    """The directory part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _list_files(path: str) -> list[tuple[Location | None, Location]]:
    """The files a source path (or fsspec URL) names, as (root, file) pairs sorted by path below the root; hidden
    files left out."""
    if isinstance(location(path), RemotePath):
        return _list_remote_files(path)
    if glob.has_magic(path):
        root = Path(_glob_root(path))
        matches = [Path(match) for match in glob.glob(path, recursive=True)]
        files = [file for match in matches for file in (_walk(match) if match.is_dir() else [match]) if file.is_file()]
        if not files:
            raise DataError(f"source pattern {path} matches no file.")
        return [(root, file) for file in sorted(set(files), key=lambda file: _relative_parts(file, root))]
    place = Path(path)
    if place.is_file():
        return [(None, place)]
    if place.is_dir():
        files = sorted(_walk(place), key=lambda file: _relative_parts(file, place))
        if not files:
            raise DataError(f"source directory {path} holds no file.")
        return [(place, file) for file in files]
    raise DataError(f"source path {path} does not exist (a Hugging Face hub dataset needs format: hf).")


def _list_remote_files(url: str) -> list[tuple[RemotePath | None, RemotePath]]:
    """_list_files on an fsspec filesystem: a file, a directory (every file below it) or a glob."""
    place = location(url)
    if glob.has_magic(place.path):
        root = RemotePath(place.fs, _glob_root(place.path))
        matches = [RemotePath(place.fs, match) for match in place.fs.glob(place.path)]
        files = {file for match in matches for file in (match.files() if match.is_dir() else [match])}
        if not files:
            raise DataError(f"source pattern {url} matches no file.")
    elif place.is_file():
        return [(None, place)]
    elif place.is_dir():
        root, files = place, place.files()
        if not files:
            raise DataError(f"source directory {url} holds no file.")
    else:
        raise DataError(f"source path {url} does not exist (a Hugging Face hub dataset needs format: hf).")
    visible = [file for file in files if not any(part.startswith(".") for part in file.relative_to(root).parts)]
    return [(root, file) for file in sorted(visible, key=lambda file: file.relative_to(root).parts)]


def _relative_parts(file: Path, root: Path) -> tuple[str, ...]:
    try:
        return file.relative_to(root).parts
    except ValueError:
        return file.parts


def _walk(directory: Path) -> list[Path]:
    """Every non-hidden regular file below DIRECTORY (broken links, pipes and sockets left out)."""
    files = []
    for root, directories, names in os.walk(directory):
        directories[:] = [name for name in directories if not name.startswith(".")]
        files.extend(Path(root, name) for name in names if not name.startswith("."))
    return [file for file in files if file.is_file()]


def _unit_id(label: str) -> str:
    """A filesystem-safe id for LABEL, made unique by a short hash of the label itself."""
    digest = hashlib.sha1(label.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{_UNSAFE_ID_CHARACTERS.sub('_', label)[-80:].strip('._') or 'unit'}-{digest}"


def _meta(unit: SourceUnit, fields: dict | None = None, **position) -> dict:
    """A document's meta: the source, the path and the position, then the record's other fields."""
    meta = {"source": unit.source.source_name, "path": unit.path or unit.source.path, **position}
    for key, value in (fields or {}).items():
        meta[f"{key}_field" if key in meta else key] = value
    return meta


# --- text and JSONL files ---------------------------------------------------------------------------------------


def _replace_escaped_bytes(text: str) -> tuple[str, int]:
    """TEXT with each surrogate-escaped invalid byte replaced by U+FFFD, and how many there were."""
    return _ESCAPED_BYTE.subn("\ufffd", text)


def _decode_utf8(data: bytes) -> tuple[str, int]:
    """DATA decoded as UTF-8 with each invalid byte replaced by U+FFFD, and how many bytes were invalid."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        return _replace_escaped_bytes(data.decode("utf-8", "surrogateescape"))


class _Utf8Decoder:
    """Incremental UTF-8 decoding that replaces each invalid byte by U+FFFD and counts them."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.invalid_bytes = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError:  # the decoder's state is unchanged: decode again, escaping the bad bytes
            self._decoder.errors = "surrogateescape"
            text, replaced = _replace_escaped_bytes(self._decoder.decode(data, final))
            self._decoder.errors = "strict"
            self.invalid_bytes += replaced
            return text


class _ClosingGzipFile(gzip.GzipFile):
    """A GzipFile reading a stream it closes too (as gzip.open does with a file it opened)."""

    def __init__(self, stream):
        super().__init__(fileobj=stream, mode="rb")
        self.stream = stream

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.stream.close()


def _open_file(path: str | Location, compression: str | None):
    """Open a plain, gzip or zstd file (a path or an fsspec URL) for buffered binary reading."""
    place = location(path)
    if compression == "gzip":
        return gzip.open(place, "rb") if isinstance(place, Path) else _ClosingGzipFile(place.open("rb"))
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(place.open("rb"), read_across_frames=True, closefd=True)
        return io.BufferedReader(reader)
    return place.open("rb")


def open_binary(path: str | os.PathLike | Location):
    """Open a file (a path or an fsspec URL) for buffered binary reading, decompressing it if its name ends in .gz,
    .zst or .zstd."""
    compression = _strip_suffixes(location(path).name)[1]
    if compression == "zstd":
        read_errors(path)  # a DataError when zstandard is missing
    return _open_file(path, compression)


def read_errors(path: str | os.PathLike | Location) -> tuple[type[BaseException], ...]:
    """The exceptions that reading PATH raises when it is missing, truncated or corrupt (compressed or not)."""
    compression = _strip_suffixes(location(path).name)[1]
    try:
        import zstandard
    except ImportError:
        if compression == "zstd":
            raise DataError(f"reading {path} needs the zstandard package (pip install 'llmlab[data]').") from None
        return (OSError, EOFError)
    return (OSError, EOFError, zstandard.ZstdError)


def _read_file_safely(unit: SourceUnit, counts: Counter, read) -> Iterator[tuple[str, dict, bool]]:
    """Skip the unit's file if it is empty or binary, else pass its stream to READ; a corrupt archive is a DataError."""
    corrupt = read_errors(unit.path)
    try:
        with _open_file(unit.path, unit.compression) as stream:
            head = stream.read(SNIFF_BYTES)
        if len(head) < SNIFF_BYTES and not head.strip():
            counts["skipped_empty"] += 1
            return
        if _looks_binary(head):
            counts["skipped_binary"] += 1
            return
        with _open_file(unit.path, unit.compression) as stream:
            yield from read(unit, stream, counts)
    except corrupt as error:
        raise DataError(f"cannot read {unit.path}: {error}.") from error


def _looks_binary(head: bytes) -> bool:
    """Whether a file's first bytes hold a NUL byte or too many invalid UTF-8 bytes to be text."""
    if b"\0" in head:
        return True
    decoder = _Utf8Decoder()
    decoder.decode(head)
    return decoder.invalid_bytes > BINARY_INVALID_FRACTION * len(head)


def _read_text(unit: SourceUnit, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    reader = _read_whole_file if unit.source.split_by == "file" else _read_blocks
    return _read_file_safely(unit, counts, reader)


def _read_whole_file(unit: SourceUnit, stream, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    """The whole file as one document, or, when longer than max_document_chars characters, as consecutive parts of at
    most that many (each ending after its last newline, if it has one), read a bounded chunk at a time."""
    limit = unit.source.max_document_chars
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # escaped bytes are replaced part by part
    pending, part, more = _strip_bom(decoder.decode(stream.read(SNIFF_BYTES))), 0, True
    while more:
        data = stream.read(min(LINE_CHUNK_BYTES, 4 * limit + 4))
        more = bool(data)
        pending += decoder.decode(data, final=not more)
        while len(pending) > limit or (not more and pending):
            cut = len(pending) if len(pending) <= limit else (pending.rfind("\n", 0, limit) + 1 or limit)
            text, replaced = _replace_escaped_bytes(pending[:cut])
            pending = pending[cut:]
            whole = part == 0 and not more and not pending
            yield text, _meta(unit) if whole else _meta(unit, part=part), replaced > 0
            part += 1


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _raw_lines(stream, max_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """Yield each line's first max_bytes bytes (end of line removed) and whether the line was longer."""
    first_read = min(max_bytes + 1, LINE_CHUNK_BYTES)
    while True:
        piece = stream.readline(first_read)
        if not piece:
            return
        if piece[-1:] == b"\n":  # the common case: the whole line in one read
            yield piece.rstrip(b"\r\n"), False
            continue
        pieces, kept = [piece], len(piece)
        while not piece.endswith(b"\n"):
            wanted = LINE_CHUNK_BYTES if kept > max_bytes else min(max_bytes + 1 - kept, LINE_CHUNK_BYTES)
            piece = stream.readline(wanted)
            if not piece:
                break
            if kept <= max_bytes:
                pieces.append(piece)
            kept += len(piece)
        line = b"".join(pieces)
        cut = len(line.rstrip(b"\r\n")) > max_bytes
        yield (line[:max_bytes] if cut else line.rstrip(b"\r\n")), cut


def _read_blocks(unit: SourceUnit, stream, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    """One document per block of lines separated by blank lines, each kept to max_document_chars characters."""
    limit = unit.source.max_document_chars
    lines: list[str] = []
    length, invalid, block = 0, False, 0
    for raw, cut in _raw_lines(stream, 4 * limit + 4):
        decoder = _Utf8Decoder()
        line = decoder.decode(raw, final=not cut)
        if block == 0 and not lines:
            line = _strip_bom(line)
        if not line.strip():
            if lines:  # a blank line ends the block
                yield "\n".join(lines), _meta(unit, block=block), invalid
                block += 1
                lines, length, invalid = [], 0, False
            continue
        if length <= limit:  # past the limit the block is already truncated; further lines are dropped
            lines.append(line)
            length += len(line) + 1
            invalid = invalid or decoder.invalid_bytes > 0
    if lines:
        yield "\n".join(lines), _meta(unit, block=block), invalid


def _read_jsonl(unit: SourceUnit, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    return _read_file_safely(unit, counts, _read_records)


def _read_records(unit: SourceUnit, stream, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    """One document per JSONL line whose text field is a string; lines too long to parse are skipped."""
    text_field = unit.source.text_field
    for number, (raw, cut) in enumerate(_raw_lines(stream, unit.source.line_limit), start=1):
        if cut:
            counts["skipped_long_line"] += 1
            continue
        if not raw or raw.isspace():
            continue
        line, invalid_bytes = _decode_utf8(raw)
        try:
            record = json.loads(_strip_bom(line) if number == 1 else line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            counts["skipped_invalid_json"] += 1
            continue
        text = record.pop(text_field, None)
        if not isinstance(text, str):
            counts["skipped_missing_text"] += 1
            continue
        yield text, _meta(unit, record, line=number), invalid_bytes > 0


# --- Parquet ----------------------------------------------------------------------------------------------------

TEXT_ARROW_TYPES = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")


def _parquet_file(path: str | Path):
    """Open a Parquet file, or raise DataError naming it."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(f"reading {path} needs the pyarrow package (pip install 'llmlab[data]').") from None
    place = location(path)
    try:
        return parquet.ParquetFile(place if isinstance(place, Path) else place.open("rb"))
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise DataError(f"cannot read Parquet file {path}: {error}.") from error


def _parquet_units(config: SourceConfig, path: Path, unit_id: str) -> list[SourceUnit]:
    """Ranges of whole row groups of about rows_per_unit rows each (at least one row group per unit)."""
    parquet_file = _parquet_file(path)
    schema = parquet_file.schema_arrow
    if config.text_field not in schema.names:
        columns = ", ".join(schema.names)
        raise DataError(f"Parquet file {path} has no column {config.text_field!r} (its columns: {columns}).")
    column_type = str(schema.field(config.text_field).type)
    if column_type not in TEXT_ARROW_TYPES:
        raise DataError(f"column {config.text_field!r} of Parquet file {path} holds {column_type}, not text.")
    metadata = parquet_file.metadata
    if metadata.num_row_groups <= 1:
        return [SourceUnit(config, unit_id, "parquet", str(path), None, 0, metadata.num_row_groups)]
    units, start, rows = [], 0, 0
    for group in range(metadata.num_row_groups):
        rows += metadata.row_group(group).num_rows
        if rows >= config.rows_per_unit or group == metadata.num_row_groups - 1:
            units.append(SourceUnit(config, f"{unit_id}-rg{start:06d}", "parquet", str(path), None, start, group + 1))
            start, rows = group + 1, 0
    return units


def _read_parquet(unit: SourceUnit, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    parquet_file = _parquet_file(unit.path)
    metadata = parquet_file.metadata
    if metadata.num_rows == 0:
        counts["skipped_empty"] += 1
        return
    row = sum(metadata.row_group(group).num_rows for group in range(unit.start))
    groups = list(range(unit.start, unit.stop))
    if not groups:
        return
    batches = parquet_file.iter_batches(batch_size=ROW_BATCH, row_groups=groups, use_threads=False)
    for batch in batches:
        yield from _read_rows(unit, batch.to_pydict(), row, counts)
        row += batch.num_rows


def _read_rows(unit: SourceUnit, columns: dict[str, list], first_row: int, counts: Counter, **position):
    """Documents from a batch of rows given as columns; the text column's other columns go to meta."""
    text_field = unit.source.text_field
    texts = columns.get(text_field)
    others = {name: values for name, values in columns.items() if name != text_field}
    length = len(next(iter(columns.values()), []))
    for index in range(length):
        text = texts[index] if texts is not None else None
        replaced = False
        if isinstance(text, bytes):
            decoder, kept = _Utf8Decoder(), 4 * unit.source.max_document_chars + 4
            text = decoder.decode(text[:kept], final=len(text) <= kept)
            replaced = decoder.invalid_bytes > 0
        if not isinstance(text, str):
            counts["skipped_missing_text"] += 1
            continue
        fields = {name: _json_safe(values[index]) for name, values in others.items()}
        yield text, _meta(unit, fields, **position, row=first_row + index), replaced


def _json_safe(value):
    """VALUE as JSON-serialisable data (anything else becomes its str)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return str(value)


# --- Hugging Face datasets --------------------------------------------------------------------------------------


def _is_saved_hf_dataset(path: Path) -> bool:
    """Whether PATH is a directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _open_hf(config: SourceConfig):
    """The configured split: a saved dataset (memory-mapped), or load_dataset's (streamed) dataset."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading {config.path} needs the datasets package (pip install 'llmlab[data]').") from None
    if not os.path.exists(config.path) and not _HUB_NAME.fullmatch(config.path):
        raise DataError(f"Hugging Face dataset {config.path} is neither an existing path nor a hub name (ORG/NAME).")
    try:
        if _is_saved_hf_dataset(Path(config.path)):
            dataset = datasets.load_from_disk(config.path)
            if isinstance(dataset, datasets.DatasetDict):
                if config.hf_split not in dataset:
                    splits = ", ".join(dataset)
                    raise DataError(f"saved dataset {config.path} has no split {config.hf_split!r} (it has {splits}).")
                dataset = dataset[config.hf_split]
            return dataset
        return datasets.load_dataset(config.path, config.hf_config, split=config.hf_split, streaming=config.streaming)
    except DataError:
        raise
    except Exception as error:  # the hub, the file system and the builders raise many kinds of error
        raise DataError(f"cannot load Hugging Face dataset {config.path}: {error}.".replace("\n", " ")) from error


def _hf_units(config: SourceConfig) -> list[SourceUnit]:
    """Row ranges of rows_per_unit rows for a map-style dataset; one unit per shard for a streamed one."""
    import datasets

    dataset = _open_hf(config)
    columns = dataset.column_names if dataset.features is not None else None
    if columns is not None and config.text_field not in columns:
        names = ", ".join(columns)
        raise DataError(f"Hugging Face dataset {config.path} has no column {config.text_field!r} (it has {names}).")
    if isinstance(dataset, datasets.IterableDataset):
        shards = dataset.num_shards
        return [SourceUnit(config, f"shard-{index:05d}-of-{shards:05d}", "hf", None, None, index, index + 1, shards)
                for index in range(shards)]
    rows = len(dataset)
    return [SourceUnit(config, f"rows-{start:012d}", "hf", None, None, start, min(start + config.rows_per_unit, rows))
            for start in range(0, rows, config.rows_per_unit)]


def _read_hf(unit: SourceUnit, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    import datasets

    dataset = _open_hf(unit.source)
    if isinstance(dataset, datasets.IterableDataset):
        if unit.num_shards > 1:
            dataset = dataset.shard(num_shards=unit.num_shards, index=unit.start)
        row = 0
        for batch in dataset.iter(batch_size=ROW_BATCH):
            yield from _read_rows(unit, batch, row, counts, shard=unit.start)
            row += len(next(iter(batch.values()), []))
        return
    row = unit.start
    for batch in dataset.select(range(unit.start, unit.stop)).iter(batch_size=ROW_BATCH):
        yield from _read_rows(unit, batch, row, counts)
        row += len(next(iter(batch.values()), []))


# --- the bundled demo corpus ------------------------------------------------------------------------------------


def _read_bundled(unit: SourceUnit, counts: Counter) -> Iterator[tuple[str, dict, bool]]:
    from llmlab.data.corpus import bundled_documents

    for document in bundled_documents(unit.source.bundled_max_chars):
        fields = dict(document["meta"])
        yield document["text"], {"source": unit.source.source_name, "path": fields.pop("source"), **fields}, False
