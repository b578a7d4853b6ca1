"""De-duplication sharded by key (datatrove's MinHash stages: signatures, buckets, duplicates, filter), with exactly
the decisions of the one-process rule of llmlab.data.dedup (`mark_duplicates` over the units in order):

* exact: a document is a duplicate when its exact key is in the seed index or is the key of an earlier document;
* near: among the candidates (the documents that are not exact duplicates and have a MinHash signature), a document
  is a duplicate when one of its band keys is in the seed index or is a band key of an earlier candidate, kept or
  not. The keys of all bands are pooled, as in the index (a key of band i equal to one of band j counts).

Every key falls in one bucket by its value range (`bucket_of`), so all occurrences of a key meet in one bucket and
a bucket decides alone: among the rows of one key, the first document is the first occurrence and every later one is
a duplicate; a document is a duplicate when any of its keys is, in any bucket. No clustering is needed: the rule is
"drop a document sharing a key with an earlier one", not "keep one document per connected cluster" (with A~C and
B~C, A and B are both kept). Range buckets keep the seed index's slice for a bucket contiguous (the index is sorted)
and make the buckets' sorted key sets, concatenated in bucket order, the whole updated index.

A document is named by its id, (unit position << 32) | row, so ids sort in unit order. Arrays go to files as
consecutive .npy records (`write_arrays`), of which `read_rows` reads a slice by seeking, on any seekable stream
(local or fsspec), so a task reads only its share.
"""

from __future__ import annotations

import numpy as np

from llmlab.data.dedup import sorted_unique

ROW_BITS = 32


def document_ids(position: int, count: int) -> np.ndarray:
    """The ids of the first COUNT documents of the unit at POSITION in unit order."""
    return (np.uint64(position) << np.uint64(ROW_BITS)) | np.arange(count, dtype=np.uint64)


def rows_of(ids: np.ndarray) -> np.ndarray:
    """The row within its unit of each document id."""
    return (ids & np.uint64((1 << ROW_BITS) - 1)).astype(np.int64)


def bucket_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each uint64 key: its rank among BUCKETS equal ranges of the high 32 bits (monotone in the key)."""
    return ((keys >> np.uint64(32)) * np.uint64(buckets) >> np.uint64(32)).astype(np.int64)


def bucket_bounds(bucket: int, buckets: int) -> tuple[int, int]:
    """The keys [low, high) of BUCKET (high is 2^64 for the last)."""
    def low(b: int) -> int:
        return -(-(b << 32) // buckets) << 32  # the least high-32-bit value h with h·buckets >> 32 == b
    return low(bucket), low(bucket + 1) if bucket + 1 < buckets else 1 << 64


def partition(keys: np.ndarray, ids: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [key, id] of every key of every document (KEYS: documents × keys per document), grouped by bucket (in
    document order within one), and the BUCKETS + 1 offsets of the groups."""
    keys = keys.reshape(len(ids), -1) if len(ids) else keys.reshape(0, 1)
    rows = np.stack([keys.ravel(), np.repeat(ids, keys.shape[1])], axis=1)
    order = np.argsort(bucket_of(rows[:, 0], buckets), kind="stable")
    offsets = np.searchsorted(bucket_of(rows[order, 0], buckets), np.arange(buckets + 1))
    return offsets.astype(np.int64), rows[order]


def bucket_duplicates(rows: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted ids of the documents of ROWS ([key, id], one bucket's) that repeat a key of SEED (sorted) or of an
    earlier document, and the bucket's keys: SEED and ROWS' keys, sorted, each once."""
    keys, ids = rows[:, 0], rows[:, 1]
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    first = np.concatenate([[True], keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, bool)
    first_id = ids[first][np.cumsum(first) - 1]
    position = np.minimum(np.searchsorted(seed, keys), max(len(seed) - 1, 0))
    seen = seed[position] == keys if len(seed) else np.zeros(len(keys), bool)
    duplicates = np.unique(ids[(first_id < ids) | seen])
    return duplicates, sorted_unique(np.concatenate([np.asarray(seed, np.uint64), keys]))


def unit_offsets(ids: np.ndarray, units: int) -> np.ndarray:
    """The UNITS + 1 offsets of each unit's slice of the sorted document IDS."""
    return np.searchsorted(ids, np.arange(units + 1, dtype=np.uint64) << np.uint64(ROW_BITS)).astype(np.int64)


def flags(count: int, ids: np.ndarray) -> np.ndarray:
    """COUNT booleans, true at the rows of IDS (of one unit)."""
    marked = np.zeros(count, dtype=bool)
    marked[rows_of(ids)] = True
    return marked


# ------------------------------------------------------------------------------------------------------------
# Arrays in files: consecutive .npy records, read whole or by a slice of rows


def write_arrays(stream, *arrays: np.ndarray) -> None:
    """Write ARRAYS to STREAM one after another, each as np.save writes it."""
    for array in arrays:
        np.save(stream, np.ascontiguousarray(array), allow_pickle=False)


def _header(stream) -> tuple[tuple, np.dtype, int]:
    """The next record's shape and dtype, and the stream position of its data."""
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream)
    if fortran or dtype.hasobject:
        raise ValueError("only C-ordered plain arrays are read by slices")
    return shape, dtype, stream.tell()


def _skip(stream, count: int) -> None:
    """Move past COUNT records."""
    for _ in range(count):
        shape, dtype, start = _header(stream)
        stream.seek(start + int(np.prod(shape)) * dtype.itemsize)


def read_rows(stream, record: int, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Rows [START, STOP) (all by default) of the RECORD-th array in STREAM, read without the rest."""
    stream.seek(0)
    _skip(stream, record)
    shape, dtype, data = _header(stream)
    start, stop = start or 0, shape[0] if stop is None else stop
    row_items = int(np.prod(shape[1:]))
    stream.seek(data + start * row_items * dtype.itemsize)
    count = (stop - start) * row_items
    array = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype, count=count)
    return array.reshape((stop - start, *shape[1:])).copy()


def sorted_range(stream, low: int, high: int) -> np.ndarray:
    """The keys in [LOW, HIGH) of the sorted 1-D uint64 array in STREAM (an .npy file), found by binary search."""
    shape, dtype, data = _header(stream)

    def search(key: int) -> int:
        first, last = 0, shape[0]
        while first < last:
            middle = (first + last) // 2
            stream.seek(data + middle * dtype.itemsize)
            if int(np.frombuffer(stream.read(dtype.itemsize), dtype)[0]) < key:
                first = middle + 1
            else:
                last = middle
        return first

    begin, end = search(low), search(high)
    stream.seek(data + begin * dtype.itemsize)
    return np.frombuffer(stream.read((end - begin) * dtype.itemsize), dtype=dtype).astype(np.uint64)


def write_concatenated(stream, pieces, total: int) -> None:
    """Write one 1-D uint64 .npy array of TOTAL items from PIECES (arrays, one at a time), as np.save would."""
    np.lib.format.write_array_header_1_0(
        stream, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint64)), "fortran_order": False,
                 "shape": (total,)})
    for piece in pieces:
        stream.write(np.ascontiguousarray(piece, dtype=np.uint64).tobytes())


def record_length(stream, record: int) -> int:
    """The number of rows of the RECORD-th array in STREAM, from its header."""
    stream.seek(0)
    _skip(stream, record)
    return _header(stream)[0][0]
