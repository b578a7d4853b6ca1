"""Sharded de-duplication: a hand-worked example of the rule (not a clustering), random keys with many collisions
against the one-process `mark_duplicates` over the units in order, the pipeline's decisions and index against the
streaming `Deduplicator` (with a seed index, any bucket count), and the .npy slices against numpy's own files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from llmlab.data import dedup_sharded as sharded
from llmlab.data import pipeline
from llmlab.data.dedup import DedupIndex, Deduplicator, KeySet, mark_duplicates
from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import recipe_from_dict
from tests.data.test_dedup import planted_corpus


def sharded_keep(units: list[tuple[np.ndarray, np.ndarray, np.ndarray]], buckets: int,
                 seed_documents=(), seed_bands=()) -> list[np.ndarray]:
    """Keep flags per unit (units: exact keys, has-signature, band keys) through partition, buckets and flags."""
    seed_documents = np.sort(np.asarray(seed_documents, np.uint64))
    seed_bands = np.sort(np.asarray(seed_bands, np.uint64))

    def duplicates(parts: list, seed: np.ndarray, counts: list[int]) -> list[np.ndarray]:
        found = [np.zeros(count, bool) for count in counts]
        for bucket in range(buckets):
            rows = np.concatenate([part[1][part[0][bucket]:part[0][bucket + 1]] for part in parts])
            assert (sharded.bucket_of(rows[:, 0], buckets) == bucket).all()
            ids, _ = sharded.bucket_duplicates(rows, seed[sharded.bucket_of(seed, buckets) == bucket])
            offsets = sharded.unit_offsets(ids, len(counts))
            for unit in range(len(counts)):
                found[unit] |= sharded.flags(counts[unit], ids[offsets[unit]:offsets[unit + 1]])
        return found

    counts = [len(exact) for exact, _, _ in units]
    ids = [sharded.document_ids(position, count) for position, count in enumerate(counts)]
    exact = duplicates([sharded.partition(keys, ids[u], buckets) for u, (keys, _, _) in enumerate(units)],
                       seed_documents, counts)
    candidates = [np.flatnonzero(~exact[u] & signature) for u, (_, signature, _) in enumerate(units)]
    near = duplicates([sharded.partition(bands[candidates[u]], ids[u][candidates[u]], buckets)
                       for u, (_, _, bands) in enumerate(units)], seed_bands, counts)
    return [~e & ~n for e, n in zip(exact, near)]


def sequential_keep(units, seed_documents=(), seed_bands=()) -> list[np.ndarray]:
    """Today's one-process rule: mark_duplicates over the units in order (exact, then near among the survivors)."""
    documents, bands = KeySet(np.asarray(seed_documents, np.uint64)), KeySet(np.asarray(seed_bands, np.uint64))
    keeps = []
    for exact, signature, band_keys in units:
        keep = ~mark_duplicates(exact.copy(), documents)
        survivors = np.flatnonzero(keep)
        if len(survivors):
            keep[survivors[mark_duplicates(band_keys[survivors], bands, signature[survivors])]] = False
        keeps.append(keep)
    return keeps


def keys(*rows):
    """Units of documents given as (exact key, has signature, [band keys])."""
    return (np.array([row[0] for row in rows], np.uint64), np.array([row[1] for row in rows], bool),
            np.array([row[2] for row in rows], np.uint64))


# Band keys spread over the key space, so that a document's keys fall in different buckets
K = [(i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(20)]


@pytest.mark.parametrize("buckets", [1, 3, 16])
def test_hand_worked_rule_is_earlier_key_not_clustering(buckets):
    units = [keys((1, True, [K[10], K[11]]),    # kept: first
                  (2, True, [K[11], K[12]]),    # near duplicate of 0
                  (3, True, [K[12], K[13]])),   # near duplicate of 1, although 1 is dropped
             keys((1, True, [K[14], K[15]]),    # exact duplicate of 0: its band keys do not count
                  (4, True, [K[15], K[16]]),    # kept: only the exact duplicate shared K15
                  (5, False, [K[16], K[17]]),   # kept: no signature, so neither tested nor remembered
                  (6, True, [K[17], K[18]]),    # kept: K17 belonged to a document without a signature
                  (7, True, [K[1], K[2]]),      # kept (A of A~C, B~C)
                  (8, True, [K[3], K[4]]),      # kept (B): a cluster's second root is kept, not merged away
                  (9, True, [K[2], K[3]]),      # near duplicate (C)
                  (9, True, [K[5], K[5]]))]     # exact duplicate of C; its two equal keys do not make it a near one
    expected = [[True, False, False], [False, True, True, True, True, True, False, False]]
    assert [keep.tolist() for keep in sharded_keep(units, buckets)] == expected
    assert [keep.tolist() for keep in sequential_keep(units)] == expected
    seeded = sharded_keep(units, buckets, seed_documents=[4], seed_bands=[K[1]])
    assert [keep.tolist() for keep in seeded] == [[True, False, False],
                                                  [False, False, True, True, False, True, False, False]]


def test_bucket_bounds_are_the_key_ranges_of_bucket_of():
    keys = np.random.default_rng(0).integers(0, 1 << 64, 5000, dtype=np.uint64)
    keys[:4] = [0, (1 << 64) - 1, 1 << 63, (1 << 32) - 1]
    for buckets in (1, 3, 16, 1000):
        for bucket in range(buckets):
            low, high = sharded.bucket_bounds(bucket, buckets)
            inside = [low <= int(key) < high for key in keys]
            assert inside == (sharded.bucket_of(keys, buckets) == bucket).tolist()


@pytest.mark.parametrize("buckets", [1, 2, 7, 64])
def test_random_collisions_match_the_one_process_rule(buckets):
    rng = np.random.default_rng(buckets)
    vocabulary = rng.integers(0, 1 << 64, size=60, dtype=np.uint64)  # few keys: many collisions and chains
    units = [(rng.choice(vocabulary[:40], count), rng.random(count) < 0.9,
              rng.choice(vocabulary, (count, 4))) for count in (0, 30, 1, 25, 40)]
    seed_documents, seed_bands = vocabulary[:3], vocabulary[40:43]
    for seeds in ((), (seed_documents, seed_bands)):
        got, want = sharded_keep(units, buckets, *seeds), sequential_keep(units, *seeds)
        assert [keep.tolist() for keep in got] == [keep.tolist() for keep in want]
        assert 0 < sum(keep.sum() for keep in want) < sum(len(keep) for keep in want)


def test_npy_records_read_by_slices_and_concatenated_as_numpy_writes_them():
    a, b = np.arange(12, dtype=np.int64), np.arange(30, dtype=np.uint64).reshape(15, 2)
    stream = io.BytesIO()
    sharded.write_arrays(stream, a, b, np.zeros(0, bool))
    assert sharded.read_rows(stream, 0).tolist() == a.tolist()
    assert sharded.read_rows(stream, 1, 4, 9).tolist() == b[4:9].tolist()
    assert sharded.read_rows(stream, 2).shape == (0,) and sharded.record_length(stream, 1) == 15
    stream.seek(0)
    assert np.load(stream).tolist() == a.tolist() and np.load(stream).tolist() == b.tolist()  # numpy reads them too
    keys = np.sort(np.random.default_rng(0).integers(0, 1 << 64, 1000, dtype=np.uint64))
    saved = io.BytesIO()
    np.save(saved, keys)
    assert sharded.sorted_range(io.BytesIO(saved.getvalue()), int(keys[100]), int(keys[250])).tolist() == \
        keys[100:250].tolist()
    concatenated = io.BytesIO()
    sharded.write_concatenated(concatenated, [keys[:300], keys[300:301], keys[301:]], len(keys))
    assert concatenated.getvalue() == saved.getvalue()


def write_units(directory: Path, corpus: list[dict], files: int) -> list[list[dict]]:
    """CORPUS cut into FILES JSONL files (part00, part01, ... in unit order); the records of each."""
    directory.mkdir(parents=True)
    parts = [corpus[i * len(corpus) // files:(i + 1) * len(corpus) // files] for i in range(files)]
    for number, part in enumerate(parts):
        (directory / f"part{number:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return parts


def kept_texts(output: Path) -> list[str]:
    from llmlab.data.jsonl import read_documents

    return [document["text"] for path in sorted((output / "documents").rglob("*.jsonl.gz"))
            for document in read_documents(path)]


@pytest.mark.parametrize("bucket_rows", [1 << 22, 50])
def test_pipeline_decisions_and_index_equal_the_streaming_deduplicator(tmp_path, monkeypatch, bucket_rows):
    monkeypatch.setattr(pipeline, "BUCKET_ROWS", bucket_rows)  # 50: dozens of buckets of a few keys each
    corpus = planted_corpus(distinct=150, near=60, exact=30)
    first, second = corpus[:160], corpus[160:]
    write_units(tmp_path / "first", first, 5)
    write_units(tmp_path / "second", second, 3)
    recipe = {"compression": "gzip", "stages": [{"dedup": {"near": True}}]}
    run_pipeline(recipe_from_dict({"sources": [{"path": str(tmp_path / "first")}], **recipe}), tmp_path / "a",
                 progress=False)
    seeded = {"sources": [{"path": str(tmp_path / "second")}], "compression": "gzip",
              "stages": [{"dedup": {"near": True, "index": str(tmp_path / "a" / "dedup" / "index")}}]}
    report = run_pipeline(recipe_from_dict(seeded), tmp_path / "b", progress=False)

    reference = Deduplicator(near=True)
    assert kept_texts(tmp_path / "a") == [r["text"] for r in reference({"text": r["text"]} for r in first)]
    reference.index.save(tmp_path / "reference-a")
    before = dict(reference.stats)
    kept = [r["text"] for r in reference({"text": r["text"]} for r in second)]
    assert kept_texts(tmp_path / "b") == kept
    counts = {key: reference.stats[key] - before[key] for key in ("exact_duplicates", "near_duplicates")}
    assert report["stages"][-1]["counts"] == counts
    assert counts["near_duplicates"] > 0 and counts["exact_duplicates"] > 0
    reference.index.save(tmp_path / "reference-b")
    for run, expected in (("a", "reference-a"), ("b", "reference-b")):
        for name in ("documents.npy", "bands.npy", "units.npy", "index.json"):
            assert (tmp_path / run / "dedup" / "index" / name).read_bytes() == \
                (tmp_path / expected / name).read_bytes(), (run, name)
    assert DedupIndex.load(tmp_path / "b" / "dedup" / "index")  # readable as an index
    if bucket_rows == 50:
        assert len(list((tmp_path / "a" / "dedup" / "buckets").glob("near-*.npy"))) == 48  # 160 documents × 15 keys / 50


def test_file_urls_name_the_same_files_and_unknown_filesystems_are_refused(tmp_path):
    from llmlab.errors import ConfigError

    write_units(tmp_path / "corpus", planted_corpus(distinct=30, near=10, exact=5), 3)
    runs = {}
    for name, prefix in (("plain", ""), ("url", "file://")):
        data = {"sources": [{"path": prefix + str(tmp_path / "corpus")}], "compression": "gzip",
                "stages": [{"dedup": {"near": True}}]}
        run_pipeline(recipe_from_dict(data), prefix + str(tmp_path / name), progress=False)
        runs[name] = {path.relative_to(tmp_path / name): path.read_bytes() for path in (tmp_path / name).rglob("*")
                      if path.is_file() and path.name not in ("report.json", "report.md", "recipe.json")}
    assert runs["url"] == runs["plain"] and len(runs["plain"]) > 10
    with pytest.raises(ConfigError, match="nosuchfs://out names a filesystem that fsspec cannot open"):
        run_pipeline(recipe_from_dict({"sources": [{"path": str(tmp_path / "corpus")}]}), "nosuchfs://out")
