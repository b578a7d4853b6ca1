"""De-duplication (survey §4.1): exact and MinHash-LSH near-duplicate removal, at line, sentence and document level.

* Exact: a document (or line, or sentence) whose normalised text (case-folded, whitespace collapsed) hashes to a key
  seen before is removed; the first occurrence is kept.
* Near: MinHash over word shingles (Broder 1997) with LSH banding (bands × rows): a document that shares a band key
  with any earlier document is removed. Two documents of shingle Jaccard similarity s collide with probability
  1 - (1 - s^rows)^bands (Leskovec, Rajaraman & Ullman, Mining of Massive Datasets §3.4).
* Within a document: later copies of a line, and immediate repetitions of a word n-gram, are dropped.
* Index: the keys seen so far (sorted uint64 arrays) persist in a directory, so a new corpus can be de-duplicated
  against an old one.

Documents stream through in batches; memory is bounded by one batch plus the index (8 bytes per key).
The MinHash is vectorised with numpy (no per-shingle Python): shingles are hashed once, with a polynomial rolling
hash over the batch's bytes, then the bands × rows permutations (a·h + b) mod 2^64 run over all shingles at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llmlab.data.paths import Location, atomic_path, is_remote, load_array, location
from llmlab.errors import ConfigError, DataError
from llmlab.files import follow_umask

WORD_RE = re.compile(r"\w+")
# Bytes that are word characters in ASCII text (what WORD_RE matches there) and every non-ASCII byte of UTF-8.
WORD_BYTES = np.zeros(256, dtype=bool)
WORD_BYTES[[*b"0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", *range(128, 256)]] = True
# A sentence: text up to and including its closing punctuation (or a newline, or the end), with trailing spaces.
SENTENCE_RE = re.compile(r"[^.!?\n]*(?:[.!?]+[\"'”’)\]]*|\n|$)[ \t]*\n?")
INDEX_FORMAT = 1
HASH_SCHEME = "utf8-words|poly64|splitmix64>>32|(a*h+b)mod2^64|band-sum-splitmix64"
# A batch ends after 1024 documents or 4 Mi characters; signatures use a document's first 1 Mi characters. Together
# they bound the batch's arrays (about 16 bytes per character) whatever the documents' sizes.
BATCH_CHARACTERS, MAX_NEAR_CHARACTERS = 1 << 22, 1 << 20
PERMUTATION_BLOCK, SHINGLE_CHUNK = 16, 8192  # (permutations × shingles) computed at once: about 1 MB, so in cache


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014) applied elementwise to a uint64 array: a well-mixed 64-bit hash."""
    x = values + np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def normalise(text: str) -> str:
    """The text exact de-duplication compares: case-folded, whitespace runs collapsed to one space, trimmed."""
    return " ".join(text.lower().split())


def exact_key(text: str) -> int:
    """The 64-bit key of a text's normalised form (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=8).digest(), "little")


def exact_keys(texts: Iterable[str]) -> np.ndarray:
    """The exact keys of several texts as a uint64 array."""
    return np.fromiter((exact_key(text) for text in texts), dtype=np.uint64)


def words(text: str) -> list[str]:
    """The lower-cased word tokens MinHash shingles are made of (maximal runs of Unicode word characters)."""
    return WORD_RE.findall(text.lower())


class KeySet:
    """A growing set of uint64 keys kept as a few sorted arrays (a log-structured merge), queried vectorised."""

    def __init__(self, keys: np.ndarray | None = None):
        self.levels: list[np.ndarray] = []
        if keys is not None and len(keys):
            self.levels.append(np.unique(np.asarray(keys, dtype=np.uint64)))

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each key, whether it is in the set."""
        found = np.zeros(len(keys), dtype=bool)
        for level in self.levels:
            position = np.minimum(np.searchsorted(level, keys), len(level) - 1)
            found |= level[position] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        """Insert keys; levels of similar size are merged so that a lookup searches O(log n) arrays."""
        if len(keys) == 0:
            return
        self.levels.append(np.unique(keys))
        while len(self.levels) > 1 and 2 * len(self.levels[-1]) >= len(self.levels[-2]):
            newer, older = self.levels.pop(), self.levels.pop()
            self.levels.append(sorted_unique(np.concatenate([older, newer])))

    def to_array(self) -> np.ndarray:
        """Every key once, sorted."""
        if not self.levels:
            return np.zeros(0, dtype=np.uint64)
        return sorted_unique(np.concatenate(self.levels))


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct keys (a stable sort is a linear merge when KEYS is a few sorted runs)."""
    keys = np.sort(keys, kind="stable")
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def mark_duplicates(keys: np.ndarray, seen: KeySet, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows of KEYS (n × m) sharing any key with SEEN or with an earlier valid row; then every valid key joins SEEN."""
    keys = keys.reshape(len(keys), -1) if len(keys) else keys.reshape(0, 1)
    rows = np.arange(len(keys)) if valid is None else np.flatnonzero(valid)
    flat = keys[rows].ravel()
    if len(flat) == 0:
        return np.zeros(len(keys), dtype=bool)
    owner = np.repeat(np.arange(len(rows)), keys.shape[1])
    order = np.argsort(flat, kind="stable")  # stable: within equal keys the earliest row comes first
    sorted_keys, sorted_owner = flat[order], owner[order]
    group_start = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    first_owner = sorted_owner[group_start][np.cumsum(group_start) - 1]
    earlier = np.empty(len(flat), dtype=bool)
    earlier[order] = first_owner < sorted_owner
    hit = earlier | seen.contains(flat)
    duplicate = np.zeros(len(keys), dtype=bool)
    duplicate[rows] = hit.reshape(len(rows), keys.shape[1]).any(axis=1)
    seen.add(flat)
    return duplicate


@dataclass(frozen=True)
class MinHashConfig:
    """MinHash-LSH parameters: word shingle size, LSH bands × rows (so bands·rows permutations), hash seed."""

    shingle: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("shingle", "bands", "rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"MinHash {name} must be a positive integer, got {getattr(self, name)!r}.")

    def collision_probability(self, similarity: float) -> float:
        """The probability that two documents of this Jaccard similarity share a band: 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - similarity**self.rows) ** self.bands


# Hand-written: datasketch hashes shingle by shingle in Python, and datatrove's MinHash is 8-9x slower end to end
# even with whitespace words instead of spaCy (56-59x with spaCy; benchmarks/bench_dedup.py, docs/benchmarks.md).
class MinHash:
    """Vectorised MinHash signatures and LSH band keys for batches of texts."""

    def __init__(self, config: MinHashConfig = MinHashConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        permutations = config.bands * config.rows
        # Multiply-add-shift (Dietzfelbinger 1996): (a·h + b) mod 2^64 for a 32-bit h and random 64-bit a (odd), b is
        # strongly universal in its high bits. (a·h + b) mod (2^61 - 1) with a, b < 2^32 (so that a·h fits in uint64)
        # is not: it is nearly monotone in h, so all permutations pick about the same minimum.
        self.a = rng.integers(0, 1 << 63, size=permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=permutations, dtype=np.uint64) * np.uint64(2)
        self.band_multipliers = rng.integers(0, 1 << 63, size=(config.bands, config.rows), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.base = int(rng.integers(1 << 40, 1 << 62)) | 1  # odd, so invertible modulo 2^64
        self.powers = np.ones(1, dtype=np.uint64)
        self.inverse_powers = np.ones(1, dtype=np.uint64)

    def _ensure_powers(self, length: int) -> None:
        """Cache base^i and base^-i modulo 2^64 for i < LENGTH."""
        if len(self.powers) >= length:
            return
        length = max(length, 2 * len(self.powers))
        inverse = pow(self.base, -1, 1 << 64)
        self.powers, self.inverse_powers = (_powers(self.base, length), _powers(inverse, length))

    def canonical_words(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The batch's words as one byte array, single-space separated, and each text's word count.

        ASCII texts are tokenised with a byte table (the same result as WORD_RE, without a Python loop per word);
        other texts go through WORD_RE first.
        """
        prepared = [text[:MAX_NEAR_CHARACTERS] if text.isascii() else " ".join(words(text[:MAX_NEAR_CHARACTERS])) for text in texts]
        data = np.frombuffer("\n".join(prepared).encode("utf-8").lower(), dtype=np.uint8)
        is_word = WORD_BYTES[data]
        follows_word = np.concatenate([[False], is_word[:-1]])
        word_starts = np.flatnonzero(is_word & ~follows_word)
        text_starts = np.cumsum([0] + [len(p.encode("utf-8")) + 1 for p in prepared[:-1]]) if prepared else np.zeros(0, int)
        word_counts = np.diff(np.searchsorted(word_starts, np.append(text_starts, len(data))))
        keep = is_word | follows_word  # a word byte, or the first byte after a word (which becomes the separator)
        canonical = np.where(is_word, data, np.uint8(ord(" ")))[keep]
        return canonical, word_counts

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every text's word shingles, and each text's shingle count (a text of fewer words is one shingle)."""
        data, word_counts = self.canonical_words(texts)
        spaces = np.flatnonzero(data == ord(" "))
        word_starts = np.concatenate([[0], spaces + 1])
        word_ends = np.concatenate([spaces, [len(data)]])
        counts = word_counts[word_counts > 0]
        first_word = np.cumsum(counts) - counts
        per_text = np.maximum(counts - self.config.shingle + 1, 1)
        text_of = np.repeat(np.arange(len(counts)), per_text)
        start_word = first_word[text_of] + np.arange(per_text.sum()) - np.repeat(np.cumsum(per_text) - per_text, per_text)
        end_word = np.minimum(start_word + self.config.shingle - 1, first_word[text_of] + counts[text_of] - 1)
        hashes = self._substring_hashes(data, word_starts[start_word], word_ends[end_word])
        shingle_counts = np.zeros(len(texts), dtype=np.int64)
        shingle_counts[word_counts > 0] = per_text
        return splitmix64(hashes) >> np.uint64(32), shingle_counts

    def _substring_hashes(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Polynomial hashes Σ c_j·base^(end-1-j) mod 2^64 of DATA[start:end], from one prefix sum over DATA."""
        self._ensure_powers(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * self.inverse_powers[: len(data)], out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * self.powers[ends - 1]

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """MinHash signatures (texts × bands·rows, uint64) and whether each text has one (texts without words do not)."""
        hashes, shingle_counts = self.shingle_hashes(texts)
        has_signature = shingle_counts > 0
        signatures = np.zeros((len(texts), len(self.a)), dtype=np.uint64)
        if not has_signature.any():
            return signatures, has_signature
        rows = np.flatnonzero(has_signature)
        ends = np.cumsum(shingle_counts[has_signature])
        first = 0
        while first < len(rows):  # chunks of whole texts with about SHINGLE_CHUNK shingles, so the values stay in cache
            start = ends[first - 1] if first else 0
            last = max(first + 1, int(np.searchsorted(ends, start + SHINGLE_CHUNK, side="right")))
            offsets = np.concatenate([[0], ends[first : last - 1] - start])
            signatures[rows[first:last]] = self._chunk_minima(hashes[start : ends[last - 1]], offsets)
            first = last
        return signatures, has_signature

    def _chunk_minima(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """min over each text's shingles of (a·h + b) mod 2^64, for every permutation (texts × permutations)."""
        minima = np.empty((len(offsets), len(self.a)), dtype=np.uint64)
        for start in range(0, len(self.a), PERMUTATION_BLOCK):
            block = slice(start, start + PERMUTATION_BLOCK)
            values = np.multiply.outer(self.a[block], hashes)
            values += self.b[block, None]
            minima[:, block] = np.minimum.reduceat(values, offsets, axis=1).T
        return minima

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 64-bit key per band (texts × bands): the band's rows combined with per-band odd multipliers, then mixed."""
        bands = signatures.reshape(len(signatures), self.config.bands, self.config.rows) * self.band_multipliers
        return splitmix64(bands.sum(axis=2, dtype=np.uint64))


def _powers(base: int, length: int) -> np.ndarray:
    """base^i modulo 2^64 for i < LENGTH (uint64 arithmetic wraps)."""
    factors = np.full(length, base, dtype=np.uint64)
    factors[0] = 1
    return np.cumprod(factors, dtype=np.uint64)


def split_units(text: str, unit: str) -> list[str]:
    """TEXT cut into lines or sentences whose concatenation is TEXT."""
    if unit == "line":
        return text.splitlines(keepends=True)
    if unit == "sentence":
        return [piece for piece in SENTENCE_RE.findall(text) if piece]
    raise ConfigError(f"de-duplication unit must be 'line' or 'sentence', got {unit!r}.")


def remove_repeated_lines(text: str) -> str:
    """TEXT without the later copies of any non-blank line (compared normalised)."""
    seen, kept = set(), []
    for line in text.splitlines(keepends=True):
        key = normalise(line)
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(line)
    return "".join(kept)


def remove_repeated_ngrams(text: str, min_words: int = 3, max_words: int = 50) -> str:
    """TEXT with immediate repetitions of a word n-gram (min_words ≤ n ≤ max_words, case-insensitive) cut to one copy."""
    matches = list(WORD_RE.finditer(text))
    tokens = [match.group().lower() for match in matches]
    cuts, position = [], min_words
    while position < len(tokens):
        for n in range(min(max_words, position, len(tokens) - position), min_words - 1, -1):
            if tokens[position] == tokens[position - n] and tokens[position : position + n] == tokens[position - n : position]:
                cuts.append((matches[position - 1].end(), matches[position + n - 1].end()))
                position += n
                break
        else:
            position += 1
    pieces, last = [], 0
    for start, end in cuts:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


@dataclass
class DedupIndex:
    """The keys a de-duplication has seen: exact document keys, near-duplicate band keys, line/sentence keys."""

    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    documents: KeySet = field(default_factory=KeySet)
    bands: KeySet = field(default_factory=KeySet)
    units: KeySet = field(default_factory=KeySet)

    FILES = ("documents", "bands", "units")

    def save(self, directory: str | os.PathLike) -> None:
        """Write the index to DIRECTORY atomically (a temporary directory renamed into place)."""
        save_index(directory, self.minhash, lambda name, stream: np.save(stream, getattr(self, name).to_array()))

    @classmethod
    def load(cls, directory: str | os.PathLike, minhash: MinHashConfig | None = None) -> DedupIndex:
        """Read an index saved by `save`; a MINHASH differing from the stored parameters is a ConfigError."""
        directory = location(directory)
        stored = index_minhash(directory, minhash)
        try:
            arrays = {name: load_array(directory / f"{name}.npy") for name in cls.FILES}
        except (OSError, ValueError) as error:
            raise DataError(f"de-duplication index {directory} is missing or unreadable ({error}).") from error
        if any(array.dtype != np.uint64 or array.ndim != 1 for array in arrays.values()):
            raise DataError(f"de-duplication index {directory} holds arrays that are not 1-D uint64.")
        return cls(stored, **{name: KeySet(array) for name, array in arrays.items()})


def index_minhash(directory: str | os.PathLike, minhash: MinHashConfig | None = None) -> MinHashConfig:
    """The MinHash parameters of the index in DIRECTORY (its index.json checked); differing from MINHASH is a
    ConfigError."""
    try:
        meta = json.loads((location(directory) / "index.json").read_text())
        stored = MinHashConfig(**meta["minhash"])
        if meta.get("format") != INDEX_FORMAT or meta.get("hash") != HASH_SCHEME:
            raise DataError(f"de-duplication index {directory} was written by an incompatible version of llmlab.")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"de-duplication index {directory} is missing or unreadable ({error}).") from error
    for name, value in asdict(minhash or stored).items():
        if getattr(stored, name) != value:
            raise ConfigError(f"MinHash {name} is {value} but the index {directory} was built with {getattr(stored, name)}.")
    return stored


class Deduplicator:
    """Streams documents and drops duplicates (exact, and with `near` MinHash-LSH); the first occurrence is kept."""

    def __init__(
        self,
        near: bool = False,
        minhash: MinHashConfig = MinHashConfig(),
        unit: str | None = None,
        repeats: bool = False,
        index: DedupIndex | None = None,
        batch_size: int = 1024,
    ):
        """MINHASH is ignored when INDEX is given: the index's own parameters apply."""
        if unit is not None:
            split_units("", unit)  # validates the unit
        self.near, self.unit, self.repeats, self.batch_size = near, unit, repeats, batch_size
        self.index = index if index is not None else DedupIndex(minhash)
        self.minhash = MinHash(self.index.minhash) if near else None
        self.stats: Counter = Counter()  # exact_duplicates, near_duplicates, duplicate_units, emptied, kept

    def keep_mask(self, texts: list[str]) -> np.ndarray:
        """Which of a batch of texts survive document-level de-duplication against everything seen before."""
        exact = mark_duplicates(exact_keys(texts), self.index.documents)
        self.stats["exact_duplicates"] += int(exact.sum())
        keep = ~exact
        if self.near and keep.any():
            survivors = np.flatnonzero(keep)
            signatures, has_signature = self.minhash.signatures([texts[i] for i in survivors])
            near = mark_duplicates(self.minhash.band_keys(signatures), self.index.bands, has_signature)
            keep[survivors[near]] = False
            self.stats["near_duplicates"] += int(near.sum())
        return keep

    def _dedup_units(self, texts: list[str]) -> list[str]:
        """The texts without lines/sentences seen before (in this batch, earlier batches or the index)."""
        pieces = [split_units(text, self.unit) for text in texts]
        flat = [piece for text_pieces in pieces for piece in text_pieces]
        keys = exact_keys(flat)
        duplicate = mark_duplicates(keys, self.index.units, np.array([bool(normalise(p)) for p in flat], dtype=bool))
        self.stats["duplicate_units"] += int(duplicate.sum())
        out, position = [], 0
        for text_pieces in pieces:
            out.append("".join(p for p, dup in zip(text_pieces, duplicate[position : position + len(text_pieces)]) if not dup))
            position += len(text_pieces)
        return out

    def process_batch(self, documents: list[dict]) -> list[dict]:
        """The documents of one batch that survive, in order, with their texts cleaned of repeats if asked."""
        texts = [document["text"] for document in documents]
        if self.repeats:
            texts = [remove_repeated_ngrams(remove_repeated_lines(text)) for text in texts]
        if self.unit is not None:
            texts = self._dedup_units(texts)
        nonempty = [bool(text.strip()) for text in texts]
        self.stats["emptied"] += nonempty.count(False)
        candidates = [i for i, flag in enumerate(nonempty) if flag]
        keep = self.keep_mask([texts[i] for i in candidates]) if candidates else np.zeros(0, dtype=bool)
        self.stats["kept"] += int(keep.sum())
        return [{**documents[i], "text": texts[i]} for i, kept in zip(candidates, keep) if kept]

    def __call__(self, documents: Iterable[dict]) -> Iterator[dict]:
        """Stream DOCUMENTS ({"text": ..., ...}) in bounded batches and yield the survivors in order."""
        batch, characters = [], 0
        for document in documents:
            batch.append(document)
            characters += len(document["text"])
            if len(batch) == self.batch_size or characters >= BATCH_CHARACTERS:
                yield from self.process_batch(batch)
                batch, characters = [], 0
        if batch:
            yield from self.process_batch(batch)


def seed_index(directory: str | os.PathLike | None) -> Location | None:
    """DIRECTORY (a path or an fsspec URL) if it holds a saved index, None if it is None, absent or empty; anything
    else is a DataError."""
    if directory is None:
        return None
    place = location(directory)
    if place.exists() and not place.is_dir():
        raise DataError(f"{directory} is a file, not a de-duplication index directory.")
    if (place / "index.json").exists():
        return place
    if place.is_dir() and any(place.iterdir()):
        raise DataError(f"{directory} is not empty and holds no de-duplication index (index.json).")
    return None


def open_index(directory: str | os.PathLike | None, minhash: MinHashConfig = MinHashConfig()) -> DedupIndex:
    """The index saved in DIRECTORY, or a new empty one if DIRECTORY is None, absent or empty."""
    directory = seed_index(directory)
    return DedupIndex.load(directory, minhash) if directory is not None else DedupIndex(minhash)


def save_index(directory: str | os.PathLike, minhash: MinHashConfig, write: Callable[[str, BinaryIO], None]) -> None:
    """Write an index to DIRECTORY atomically (a temporary directory renamed into place); WRITE(name, stream) writes
    the .npy array of each of DedupIndex.FILES. On an object store, where no directory appears at once, index.json
    is removed first and written last."""
    directory = location(directory)
    meta = {"format": INDEX_FORMAT, "hash": HASH_SCHEME, "minhash": asdict(minhash)}
    if is_remote(directory):
        (directory / "index.json").unlink(missing_ok=True)
        for name in DedupIndex.FILES:
            with atomic_path(directory / f"{name}.npy") as staging, staging.open("wb") as stream:
                write(name, stream)
        with atomic_path(directory / "index.json") as staging:
            staging.write_text(json.dumps(meta, indent=1) + "\n")
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        for name in DedupIndex.FILES:
            with open(temporary / f"{name}.npy", "wb") as stream:
                write(name, stream)
        (temporary / "index.json").write_text(json.dumps(meta, indent=1) + "\n")
        follow_umask(temporary)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
            os.replace(directory, old)
        os.replace(temporary, directory)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def dedup_jsonl(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    near: bool = False,
    minhash: MinHashConfig = MinHashConfig(),
    unit: str | None = None,
    repeats: bool = False,
    index_dir: str | os.PathLike | None = None,
    text_field: str = "text",
) -> dict:
    """De-duplicate a JSONL file into another (also against INDEX_DIR's index, which is then updated); return the counts."""
    from llmlab.data.jsonl import map_jsonl

    deduplicator = Deduplicator(near, unit=unit, repeats=repeats, index=open_index(index_dir, minhash))
    report = map_jsonl(source, destination, deduplicator, text_field)
    if index_dir is not None:
        deduplicator.index.save(index_dir)
    return {**report, "counts": dict(deduplicator.stats)}
