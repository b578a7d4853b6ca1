"""De-duplication: planted duplicates on a generated corpus, the LSH S-curve against 1-(1-s^r)^b, exact keep-first, index."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from llmlab.cli.main import main
from llmlab.data.dedup import (
    DedupIndex,
    Deduplicator,
    MinHash,
    MinHashConfig,
    dedup_jsonl,
    remove_repeated_lines,
    remove_repeated_ngrams,
    split_units,
)
from llmlab.errors import ConfigError


def shingles(text: str, size: int = 5) -> set[tuple[str, ...]]:
    """The word shingles of a space-separated lower-case text, straight from the definition."""
    tokens = text.split()
    return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(first: str, second: str) -> float:
    """Exact Jaccard similarity of two texts' 5-word shingle sets."""
    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b)


def planted_corpus(distinct: int, near: int, exact: int, seed: int = 0, min_jaccard: float = 0.8) -> list[dict]:
    """Random documents of 100–200 words, plus near-duplicates (Jaccard ≥ MIN_JACCARD, checked) and exact copies.

    Every planted copy comes after its source. Records carry id, kind ("distinct", "near", "exact") and source.
    """
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20000)]
    originals = [" ".join(rng.choices(vocabulary, k=rng.randint(100, 200))) for _ in range(distinct)]
    keyed = [(float(i), {"text": text, "id": i, "kind": "distinct", "source": i}) for i, text in enumerate(originals)]
    for number in range(near + exact):
        source = rng.randrange(distinct)
        if number < near:
            tokens = originals[source].split()
            for edits in range(rng.randint(1, 3), 0, -1):
                edited = list(tokens)
                for position in rng.sample(range(len(tokens)), edits):
                    edited[position] = rng.choice(vocabulary)
                text = " ".join(edited)
                if text != originals[source] and jaccard(text, originals[source]) >= min_jaccard:
                    break
            record = {"text": text, "kind": "near", "jaccard": jaccard(text, originals[source])}
        else:
            record = {"text": originals[source], "kind": "exact"}
        keyed.append((rng.uniform(source + 0.1, distinct), {**record, "id": distinct + number, "source": source}))
    return [record for _, record in sorted(keyed, key=lambda pair: pair[0])]


def removal_rates(corpus: list[dict], kept_ids: set[int]) -> dict[str, float]:
    """For each kind of document, the fraction that de-duplication removed."""
    rates = {}
    for kind in ("distinct", "near", "exact"):
        ids = [record["id"] for record in corpus if record["kind"] == kind]
        rates[kind] = sum(identifier not in kept_ids for identifier in ids) / len(ids)
    return rates


def test_planted_near_duplicates_removed_and_distinct_kept():
    corpus = planted_corpus(distinct=3000, near=600, exact=300)
    near_jaccards = [record["jaccard"] for record in corpus if record["kind"] == "near"]
    assert min(near_jaccards) >= 0.8
    kept = list(Deduplicator(near=True)(dict(record) for record in corpus))
    rates = removal_rates(corpus, {record["id"] for record in kept})
    assert rates["near"] >= 0.95
    assert rates["exact"] == 1.0
    assert rates["distinct"] <= 0.005
    assert [record["id"] for record in kept] == sorted((record["id"] for record in kept), key=[r["id"] for r in corpus].index)


def pair_with_jaccard(rng: random.Random, tag: int, length: int, replaced: int) -> tuple[str, str]:
    """Two texts of LENGTH distinct words that differ in a block of REPLACED words in the middle."""
    first = [f"w{tag}x{i}" for i in range(length)]
    second = list(first)
    start = rng.randrange(10, length - replaced - 10)
    second[start : start + replaced] = [f"v{tag}x{i}" for i in range(replaced)]
    return " ".join(first), " ".join(second)


def test_lsh_collision_probability_follows_the_s_curve():
    config = MinHashConfig()
    minhash = MinHash(config)
    rng = random.Random(1)
    for replaced in (5, 11, 20, 32, 50):  # Jaccard about 0.90, 0.83, 0.74, 0.64, 0.53 for 200 words
        pairs = [pair_with_jaccard(rng, tag, 200, replaced) for tag in range(250)]
        texts = [text for pair in pairs for text in pair]
        signatures, _ = minhash.signatures(texts)
        keys = minhash.band_keys(signatures)
        collided = (keys[0::2] == keys[1::2]).any(axis=1)
        similarity = np.array([jaccard(*pair) for pair in pairs])
        expected = np.array([config.collision_probability(s) for s in similarity])
        sigma = math.sqrt(float((expected * (1 - expected)).sum())) / len(pairs)
        assert abs(collided.mean() - expected.mean()) <= 4 * sigma + 0.02, (similarity.mean(), collided.mean(), expected.mean())
        # Each signature component agrees with probability equal to the Jaccard similarity (Broder 1997).
        agreement = (signatures[0::2] == signatures[1::2]).mean()
        assert abs(agreement - similarity.mean()) <= 0.01


def test_band_count_and_rows_shape_the_curve():
    assert MinHashConfig().collision_probability(0.8) == pytest.approx(1 - (1 - 0.8**8) ** 14)
    strict = MinHash(MinHashConfig(shingle=3, bands=2, rows=4))
    signatures, has = strict.signatures(["a b c d e", "", "!!!", "one"])
    assert signatures.shape == (4, 8) and has.tolist() == [True, False, False, True]
    assert strict.band_keys(signatures).shape == (4, 2)


def test_exact_dedup_keeps_first_occurrence_and_order(tmp_path):
    source, destination = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        json.dumps({"text": "Hello   World", "id": 1}),
        json.dumps({"text": "second", "id": 2}),
        "not json",
        json.dumps({"id": 3}),
        json.dumps({"text": "hello world\n", "id": 4}),
        json.dumps({"text": "third", "id": 5, "meta": {"a": 1}}),
        json.dumps({"text": "SECOND", "id": 6}),
        json.dumps({"text": "   ", "id": 7}),
    ]
    source.write_text("\n".join(lines) + "\n")
    report = dedup_jsonl(source, destination)
    records = [json.loads(line) for line in destination.read_text().splitlines()]
    assert records == [{"text": "Hello   World", "id": 1}, {"text": "second", "id": 2}, {"text": "third", "id": 5, "meta": {"a": 1}}]
    assert report["skipped"] == {"invalid_json": 1, "missing_text": 1}
    assert report["counts"]["exact_duplicates"] == 2 and report["counts"]["emptied"] == 1


def test_line_and_sentence_dedup_across_documents():
    documents = [{"text": "alpha\nbeta\ngamma\n"}, {"text": "Beta\ndelta\n"}, {"text": "alpha\n\ngamma"}]
    kept = list(Deduplicator(unit="line")(documents))
    assert [d["text"] for d in kept] == ["alpha\nbeta\ngamma\n", "delta\n"]
    assert split_units("One. Two!  Three?\nFour", "sentence") == ["One. ", "Two!  ", "Three?\n", "Four"]
    kept = list(Deduplicator(unit="sentence")([{"text": "One. Two! Three?"}, {"text": "Two! Five."}]))
    assert [d["text"] for d in kept] == ["One. Two! Three?", "Five."]


def test_repeats_inside_a_document():
    assert remove_repeated_lines("x\ny\nX \n\n\nz\ny") == "x\ny\n\n\nz\n"
    assert remove_repeated_ngrams("Buy it now, buy it now! buy it now today.") == "Buy it now today."
    assert remove_repeated_ngrams("that that is is fine") == "that that is is fine"
    kept = list(Deduplicator(repeats=True)([{"text": "a b c a b c d\nline\nline"}]))
    assert kept == [{"text": "a b c d\nline\n"}]


def test_index_round_trip_dedups_a_new_corpus_against_an_old_one(tmp_path):
    corpus = planted_corpus(distinct=40, near=0, exact=0, seed=3)
    old, index_dir = tmp_path / "a.jsonl", tmp_path / "index"
    old.write_text("".join(json.dumps(record) + "\n" for record in corpus))
    dedup_jsonl(old, tmp_path / "a.out.jsonl", near=True, index_dir=index_dir)
    assert sorted(p.name for p in index_dir.iterdir()) == ["bands.npy", "documents.npy", "index.json", "units.npy"]
    near_copy = corpus[5]["text"].split()
    near_copy[len(near_copy) // 2] = "zzzz"
    new_texts = [corpus[3]["text"], " ".join(near_copy), "a brand new document about something else entirely",
                 "a brand new document about something else entirely"]
    assert jaccard(" ".join(near_copy), corpus[5]["text"]) >= 0.9
    new = tmp_path / "b.jsonl"
    new.write_text("".join(json.dumps({"text": text, "n": i}) + "\n" for i, text in enumerate(new_texts)))
    report = dedup_jsonl(new, tmp_path / "b.out.jsonl", near=True, index_dir=index_dir)
    assert [json.loads(line)["n"] for line in (tmp_path / "b.out.jsonl").read_text().splitlines()] == [2]
    assert report["counts"] == {"exact_duplicates": 2, "near_duplicates": 1, "emptied": 0, "kept": 1}
    assert len(DedupIndex.load(index_dir).documents.to_array()) == 40 + 2  # the near copy and the new document
    with pytest.raises(ConfigError, match="bands"):
        dedup_jsonl(new, tmp_path / "c.jsonl", near=True, minhash=MinHashConfig(bands=10), index_dir=index_dir)


def test_cli_dedup(tmp_path, capsys):
    source, destination = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    text = " ".join(f"word{i}" for i in range(60))
    variant = text.replace("word30", "other")
    source.write_text("".join(json.dumps({"text": t, "i": i}) + "\n" for i, t in enumerate([text, variant, "short one"])))
    assert main(["data", "dedup", str(source), str(destination)]) == 0
    assert len(destination.read_text().splitlines()) == 3
    assert main(["data", "dedup", str(source), str(destination), "--near", "--bands", "20", "--rows", "5"]) == 0
    assert [json.loads(line)["i"] for line in destination.read_text().splitlines()] == [0, 2]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["counts"]["near_duplicates"] == 1
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    assert main(["data", "dedup", str(source), str(destination), "--index", str(tmp_path / "junk")]) == 2
    assert main(["data", "dedup", str(source), str(destination), "--near", "--rows", "0"]) == 2


def test_wordless_empty_and_non_ascii_documents():
    documents = ["!!!", "!!!", "", "Grüße aus Köln, schöne Grüße aus Köln und mehr", "grüße aus köln schöne grüße aus köln und mehr!"]
    kept = list(Deduplicator(near=True)({"text": text} for text in documents))
    assert [d["text"] for d in kept] == documents[:1] + documents[3:4]
    assert list(Deduplicator(unit="line")([{"text": ""}, {"text": "\n"}])) == []
    # The ASCII byte-table tokeniser and the \w+ regex (taken for non-ASCII text) give the same words.
    signatures, _ = MinHash().signatures(["Hello, world... foo_bar 42 (baz)", "hello\u2026world \u201cfoo_bar\u201d 42 baz"])
    assert (signatures[0] == signatures[1]).all()


def test_huge_document_goes_through_in_a_bounded_batch():
    rng = random.Random(5)
    huge = " ".join(f"t{rng.randrange(10**6)}" for _ in range(400_000))  # about 3.2 M characters
    documents = [{"text": huge}, {"text": huge + " and a different ending"}, {"text": "small"}]
    kept = list(Deduplicator(near=True)(documents))
    assert [d["text"] for d in kept] == [huge, "small"]
