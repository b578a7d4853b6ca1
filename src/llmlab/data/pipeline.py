"""The data pipeline runner behind `llmlab data run RECIPE.yaml`: sources → stages → dedup → tokenizer → shards.

Phases, each resumable (a unit's outputs are written atomically, its stats file last, and a unit whose stats
file exists is not redone), so a run killed at any moment and run again writes the same bytes as one that was not:

1. clean (a task per unit): read it, run the per-document stages (filter, langid, pii, decontaminate), write the
   survivors (compressed JSONL), their de-duplication keys (exact key, MinHash band keys) and the unit's counts;
2. dedup (tasks per unit and per key bucket, llmlab.data.dedup_sharded): the first occurrence of a key in unit order
   is kept → one keep flag per document, and the updated de-duplication index; with units (line/sentence
   de-duplication) one process reads the corpus in order;
3. tokenizer (the driver): trained on the first de-duplicated documents in unit order (or an existing tokenizer.json);
4. finish (a task per unit): the kept documents → the cleaned corpus and (with a tokenizer) token shards;
5. the shard index and the report (report.json, report.md).

Tasks run through an executor (llmlab.data.executors): worker processes here, or a Ray cluster; every executor and
worker count writes the same bytes (the report differs only in executor, workers, tasks and seconds). The sources,
the output, a seed index and a tokenizer may be fsspec URLs (llmlab.data.paths: s3://, gs://, …), with the same bytes.

Output layout under the recipe's output directory:

    recipe.json                the recipe the directory was made with (workers and output left out)
    units/SOURCE/UNIT.*        work files: .jsonl.zst, .keys.npy, .clean.json (phase 1); .exact.npy, .near.npy,
                               .keep.npy, .dedup.json or, with dedup units, .keep.npy and .units.jsonl.zst (2);
                               .finished.json (4)
    dedup/                     stats.json, index/ (the keys seen: a de-duplication index for later corpora),
                               buckets/ (work files: each bucket's duplicates and keys)
    documents/SOURCE/UNIT.jsonl.zst   the cleaned, de-duplicated documents
    shards/                    index.json, tokenizer.json, NAME.tokens, NAME.docs (llmlab.data.shards)
    report.json, report.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import json
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.data.pipeline_recipe import (DecontaminateStage, DedupStage, FilterStage, LangidStage, PiiStage,
                                         PipelineRecipe)
from llmlab.data.pipeline_report import build_report, write_report
from llmlab.data.paths import (Location, atomic_path, is_remote, load_array, location, remove_stale_temporaries,
                               version)
from llmlab.data.sources import SourceUnit, read_unit, source_units
from llmlab.errors import ConfigError, DataError

KEY_BATCH_DOCUMENTS = 1024  # as llmlab.data.dedup.Deduplicator's batches (which also end at BATCH_CHARACTERS)
ENCODE_BATCH = 256
SUFFIXES = {"zstd": ".jsonl.zst", "gzip": ".jsonl.gz"}


@dataclass(frozen=True)
class Unit:
    """A source unit with its place in the run: its position in unit order and its file-name stem."""

    position: int
    key: str  # "SOURCE/UNIT", unique in the run and safe as a relative path
    unit: SourceUnit


@dataclass(frozen=True)
class Job:
    """What a worker needs for one unit: the recipe, the output directory and the unit."""

    recipe: PipelineRecipe
    output: Location
    unit: Unit


# ------------------------------------------------------------------------------------------------------------
# Files: atomic writes and compressed JSONL


def write_json(path: Location, data) -> None:
    """Write DATA as indented JSON atomically."""
    with atomic_path(path) as staging:
        staging.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_json(path: Location):
    """The JSON in PATH."""
    return json.loads(path.read_text())


@contextlib.contextmanager
def _compressed_writer(path: Location, compression: str):
    """A text stream writing compressed bytes to PATH (gzip without a timestamp, so the bytes are reproducible)."""
    import io

    with path.open("wb") as raw:
        if compression == "zstd":
            import zstandard

            with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as binary:
                with io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as text:
                    yield text
        else:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as binary:
                with io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as text:
                    yield text


def write_documents(path: Location, documents: Iterable[dict], compression: str) -> int:
    """Write documents atomically as compressed JSONL (read back by llmlab.data.jsonl); return how many."""
    from llmlab.data.jsonl import document_to_record

    count = 0
    with atomic_path(path) as staging, _compressed_writer(staging, compression) as stream:
        for document in documents:
            stream.write(json.dumps(document_to_record(document), ensure_ascii=False) + "\n")
            count += 1
    return count


# ------------------------------------------------------------------------------------------------------------
# Units and their files


def _safe(name: str) -> str:
    """NAME with every character outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "_"


def source_name(index: int, recipe: PipelineRecipe) -> str:
    """The name a source's files and report rows carry: its position and its name (or its path's last part)."""
    return f"{index:03d}-{_safe(recipe.sources[index].source_name)}"


def plan_units(recipe: PipelineRecipe) -> list[Unit]:
    """Every unit of every source, in the run's deterministic order."""
    units = []
    for index, source in enumerate(recipe.sources):
        if "://" in source.path and isinstance(location(source.path), Path):  # file://: the local path it names
            source = dataclasses.replace(source, path=str(location(source.path)))
        for unit in source_units(source):
            units.append(Unit(len(units), f"{source_name(index, recipe)}/{_safe(unit.id)}", unit))
    if len({unit.key for unit in units}) != len(units):
        raise ConfigError("two source units of the recipe would share a file name; give the sources distinct names.")
    return units


def unit_file(output: Location, unit: Unit, suffix: str) -> Location:
    """The work file units/SOURCE/UNIT<SUFFIX>."""
    return output / "units" / (unit.key + suffix)


# ------------------------------------------------------------------------------------------------------------
# Phase 1: the per-document stages, per unit

Process = Callable[[Iterator[dict], Counter, str], Iterator[dict]]  # (documents, the stage's counts, unit key)
_PREPARED: dict[str, list[Process]] = {}  # per process: the stages of the recipe, built once


def _filter_stage(stage: FilterStage) -> Process:
    from llmlab.data.filters import ClassifierFilter, apply_filters, build_filters

    chain = build_filters(stage)

    def process(documents, counts, unit_key):
        for rule in chain:
            if isinstance(rule, ClassifierFilter):  # the Pareto draws depend on the unit only, not on the worker
                rule.rng = np.random.default_rng([stage.seed, zlib.crc32(unit_key.encode())])
        return apply_filters(documents, chain, counts)
    return process


def _langid_stage(stage: LangidStage) -> Process:
    from llmlab.data.filters import LanguageFilter, apply_filters, identify_language, parse_language_thresholds

    if stage.keep:
        language_filter = LanguageFilter(parse_language_thresholds(stage.keep))
        return lambda documents, counts, unit_key: apply_filters(documents, [language_filter], counts)

    def process(documents, counts, unit_key):
        for document in documents:
            language, score = identify_language(document["text"])
            counts[f"language_{language}"] += 1
            yield {**document, "meta": {**document["meta"], "language": language, "language_score": round(score, 4)}}
    return process


def _pii_stage(stage: PiiStage) -> Process:
    from llmlab.data.pii import scrub_documents

    return lambda documents, counts, unit_key: scrub_documents(documents, counts)


def _decontaminate_stage(stage: DecontaminateStage) -> Process:
    from llmlab.data.decontaminate import ContaminationIndex, decontaminate

    index = ContaminationIndex(n=stage.ngram)  # built in each process: it keys n-grams by Python's salted hash()
    for path in stage.eval:
        index.add_file(path, stage.eval_fields.split(",") if stage.eval_fields else None)
    return lambda documents, counts, unit_key: decontaminate(documents, index, counts, stage.mode)


STAGE_BUILDERS = {FilterStage: _filter_stage, LangidStage: _langid_stage, PiiStage: _pii_stage,
                  DecontaminateStage: _decontaminate_stage}


def prepared_stages(recipe: PipelineRecipe) -> list[Process]:
    """The recipe's per-document stages as processes, built once per process."""
    key = json.dumps(recipe.to_dict(), sort_keys=True)
    if key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[key] = [STAGE_BUILDERS[type(stage)](stage) for stage in recipe.document_stages]
    return _PREPARED[key]


def _counted(documents: Iterable[dict], counts: Counter, key: str) -> Iterator[dict]:
    """DOCUMENTS unchanged, counting them in COUNTS[KEY]."""
    for document in documents:
        counts[key] += 1
        yield document


def _dedup_keys(documents: list[dict], dedup: DedupStage, minhash) -> np.ndarray:
    """One row per document: exact key, whether it has a MinHash signature, its LSH band keys."""
    from llmlab.data.dedup import exact_keys

    texts = [document["text"] for document in documents]
    keys = np.zeros((len(texts), 2 + dedup.bands), dtype=np.uint64)
    keys[:, 0] = exact_keys(texts)
    if dedup.near and texts:
        signatures, has_signature = minhash.signatures(texts)
        keys[:, 1] = has_signature
        keys[:, 2:] = minhash.band_keys(signatures)
    return keys


def _collect_keys(documents: Iterable[dict], dedup: DedupStage, keys: list) -> Iterator[dict]:
    """DOCUMENTS unchanged; their de-duplication key rows are appended to KEYS, a bounded batch at a time."""
    from llmlab.data.dedup import BATCH_CHARACTERS, MinHash, MinHashConfig

    minhash = MinHash(MinHashConfig(dedup.shingle, dedup.bands, dedup.rows, dedup.seed)) if dedup.near else None
    batch, characters = [], 0
    for document in documents:
        yield document
        batch.append(document)
        characters += len(document["text"])
        if len(batch) == KEY_BATCH_DOCUMENTS or characters >= BATCH_CHARACTERS:
            keys.append(_dedup_keys(batch, dedup, minhash))
            batch, characters = [], 0
    keys.append(_dedup_keys(batch, dedup, minhash))


def clean_unit(job: Job) -> dict:
    """Phase 1 for one unit: read, run the per-document stages, write survivors, dedup keys and counts."""
    recipe, unit, output = job.recipe, job.unit, job.output
    read_counts: Counter = Counter()
    stage_counts = [Counter() for _ in recipe.document_stages]
    documents = read_unit(unit.unit, read_counts)
    for process, counts in zip(prepared_stages(recipe), stage_counts):
        documents = _counted(process(_counted(documents, counts, "in"), counts, unit.key), counts, "out")
    dedup, dedup_counts, keys = recipe.dedup, Counter(), []
    if dedup is not None:
        if dedup.repeats:
            documents = _without_repeats(documents, dedup_counts)
        if dedup.units is None:  # with units, phase 2 rewrites the texts and computes their keys itself
            documents = _collect_keys(documents, dedup, keys)
    written = write_documents(unit_file(output, unit, SUFFIXES[recipe.compression]), documents, recipe.compression)
    if dedup is not None and dedup.units is None:
        with atomic_path(unit_file(output, unit, ".keys.npy")) as staging, staging.open("wb") as stream:
            np.save(stream, np.concatenate(keys))
    stats = {"unit": unit.key, "documents": written, "read": dict(sorted(read_counts.items())),
             "stages": [dict(sorted(counts.items())) for counts in stage_counts],
             "dedup": dict(sorted(dedup_counts.items()))}
    write_json(unit_file(output, unit, ".clean.json"), stats)  # last: the unit is done
    return stats


def _without_repeats(documents: Iterable[dict], counts: Counter) -> Iterator[dict]:
    """Documents without repeated lines and n-grams (`llmlab data dedup --repeats`); emptied ones are dropped."""
    from llmlab.data.dedup import remove_repeated_lines, remove_repeated_ngrams

    for document in documents:
        text = remove_repeated_ngrams(remove_repeated_lines(document["text"]))
        if not text.strip():
            counts["emptied"] += 1
            continue
        yield {**document, "text": text}


# ------------------------------------------------------------------------------------------------------------
# Phase 2: de-duplication across units, sharded by key (llmlab.data.dedup_sharded: the one-process rule's decisions)
#
#   exact parts   per unit:    .keys.npy → units/UNIT.exact.npy: [bucket offsets, rows [exact key, document id]]
#   exact buckets per bucket:  every unit's slice → dedup/buckets/exact-B.npy: [unit offsets, duplicate ids, keys]
#   near parts    per unit:    its exact duplicates → units/UNIT.near.npy: [bucket offsets, rows [band key, id] of the
#                              candidates, exact-duplicate flags]
#   near buckets  per bucket:  → dedup/buckets/near-B.npy, as the exact buckets
#   keep          per unit:    → units/UNIT.keep.npy and, last, units/UNIT.dedup.json (the unit's counts)
#   index, stats  driver:      the buckets' keys in bucket order are the updated index; dedup/stats.json last

BUCKET_ROWS = 1 << 22  # keys per bucket (16 bytes each, and about as much again to sort): a task's memory share
MIN_BUCKETS = 16  # buckets for parallelism even when the corpus is small (at most one per unit)


@dataclass(frozen=True)
class DedupJob:
    """What a de-duplication task needs: the recipe, the output, the bucket count, the whole seed index (or none),
    and its unit (with, per bucket, its slice of the bucket's duplicates) or its bucket (with every unit)."""

    recipe: PipelineRecipe
    output: Location
    buckets: int
    seed: Location | None
    unit: Unit | None = None
    slices: tuple[tuple[int, int], ...] = ()
    bucket: int = 0
    units: tuple[Unit, ...] = ()


def bucket_count(units: list[Unit], unit_stats: list[dict], dedup: DedupStage) -> int:
    """How many buckets the keys are cut into: at most BUCKET_ROWS keys each, at least MIN_BUCKETS (one per unit)."""
    documents = sum(stats["documents"] for stats in unit_stats)
    rows = documents * (1 + (dedup.bands if dedup.near else 0))
    return max(min(len(units), MIN_BUCKETS), -(-rows // BUCKET_ROWS), 1)


def _write_arrays(path: Location, *arrays: np.ndarray) -> None:
    """Write ARRAYS atomically as consecutive .npy records (llmlab.data.dedup_sharded.write_arrays)."""
    from llmlab.data.dedup_sharded import write_arrays

    with atomic_path(path) as staging, staging.open("wb") as stream:
        write_arrays(stream, *arrays)


def _read_rows(path: Location, record: int, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Rows [START, STOP) of the RECORD-th array of a file written by _write_arrays."""
    from llmlab.data.dedup_sharded import read_rows

    with path.open("rb") as stream:
        return read_rows(stream, record, start, stop)


def _bucket_file(output: Location, kind: str, bucket: int) -> Location:
    return output / "dedup" / "buckets" / f"{kind}-{bucket:05d}.npy"


def _unit_keys(job: DedupJob) -> np.ndarray:
    stats = read_json(unit_file(job.output, job.unit, ".clean.json"))
    keys = load_array(unit_file(job.output, job.unit, ".keys.npy")) if stats["documents"] else None
    return keys if keys is not None else np.zeros((0, 2 + job.recipe.dedup.bands), np.uint64)


def exact_parts(job: DedupJob) -> dict:
    """Task: the unit's exact keys cut into buckets."""
    from llmlab.data.dedup_sharded import document_ids, partition

    keys = _unit_keys(job)
    _write_arrays(unit_file(job.output, job.unit, ".exact.npy"),
                  *partition(keys[:, 0], document_ids(job.unit.position, len(keys)), job.buckets))
    return {"unit": job.unit.key}


def _bucket_task(job: DedupJob, kind: str, parts: str, index_file: str) -> dict:
    """Task: one bucket's duplicates (ids of documents repeating a key of an earlier one or of the seed index)."""
    from llmlab.data.dedup_sharded import bucket_bounds, bucket_duplicates, read_rows, sorted_range, unit_offsets

    rows = []
    for unit in job.units:
        with unit_file(job.output, unit, parts).open("rb") as stream:
            offsets = read_rows(stream, 0)
            rows.append(read_rows(stream, 1, int(offsets[job.bucket]), int(offsets[job.bucket + 1])))
    seed = np.zeros(0, np.uint64)
    if job.seed is not None:
        with (job.seed / index_file).open("rb") as stream:
            seed = sorted_range(stream, *bucket_bounds(job.bucket, job.buckets))
    duplicates, keys = bucket_duplicates(np.concatenate(rows) if rows else np.zeros((0, 2), np.uint64), seed)
    _write_arrays(_bucket_file(job.output, kind, job.bucket), unit_offsets(duplicates, len(job.units)), duplicates,
                  keys)
    return {"bucket": job.bucket}


def exact_bucket(job: DedupJob) -> dict:
    """Task: one bucket of exact keys."""
    return _bucket_task(job, "exact", ".exact.npy", "documents.npy")


def near_bucket(job: DedupJob) -> dict:
    """Task: one bucket of MinHash band keys."""
    return _bucket_task(job, "near", ".near.npy", "bands.npy")


def _duplicate_flags(job: DedupJob, kind: str, count: int) -> np.ndarray:
    """Which of the unit's COUNT documents a bucket of KIND found repeating a key."""
    from llmlab.data.dedup_sharded import flags

    marked = np.zeros(count, dtype=bool)
    for bucket, (start, stop) in enumerate(job.slices):
        if stop > start:
            marked |= flags(count, _read_rows(_bucket_file(job.output, kind, bucket), 1, start, stop))
    return marked


def near_parts(job: DedupJob) -> dict:
    """Task: the unit's exact duplicates, and the band keys of its candidates (the others with a signature) cut
    into buckets."""
    from llmlab.data.dedup_sharded import document_ids, partition

    dedup, keys = job.recipe.dedup, _unit_keys(job)
    exact = _duplicate_flags(job, "exact", len(keys)) if dedup.exact else np.zeros(len(keys), dtype=bool)
    candidates = np.flatnonzero(~exact & keys[:, 1].astype(bool)) if dedup.near else np.zeros(0, np.int64)
    offsets, rows = partition(keys[candidates, 2:], document_ids(job.unit.position, len(keys))[candidates],
                              job.buckets)
    _write_arrays(unit_file(job.output, job.unit, ".near.npy"), offsets, rows, exact)
    return {"unit": job.unit.key}


def keep_unit(job: DedupJob) -> dict:
    """Task: the unit's keep flags (neither an exact nor a near duplicate) and its counts."""
    exact = _read_rows(unit_file(job.output, job.unit, ".near.npy"), 2)
    near = _duplicate_flags(job, "near", len(exact)) if job.recipe.dedup.near else np.zeros(len(exact), bool)
    with atomic_path(unit_file(job.output, job.unit, ".keep.npy")) as staging, staging.open("wb") as stream:
        np.save(stream, ~exact & ~near)
    counts = {"in": len(exact), "out": int((~exact & ~near).sum()), "exact_duplicates": int(exact.sum()),
              "near_duplicates": int(near.sum())}
    write_json(unit_file(job.output, job.unit, ".dedup.json"), counts)  # last: the unit is done
    return counts


def global_dedup(output: Location, recipe: PipelineRecipe, units: list[Unit], unit_stats: list[dict], run) -> dict:
    """Keep flags for every phase-1 document (first occurrence kept), the updated index and the counts; RUN(task,
    jobs, name, done) runs a round of tasks."""
    from llmlab.data.dedup import MinHashConfig, index_minhash, open_index, seed_index

    dedup = recipe.dedup
    minhash = MinHashConfig(dedup.shingle, dedup.bands, dedup.rows, dedup.seed)
    seed = seed_index(dedup.index)
    if dedup.units is not None:
        index = open_index(seed, minhash)
        counts = Counter({"in": 0, "out": 0, "exact_duplicates": 0, "near_duplicates": 0})
        counts.update(_dedup_with_units(output, recipe, units, index))
        index.save(output / "dedup" / "index")
        result = dict(sorted(counts.items()))
        write_json(output / "dedup" / "stats.json", result)  # last: the phase is done
        return result
    if seed is not None:
        index_minhash(seed, minhash)
    buckets = bucket_count(units, unit_stats, dedup)
    unit_jobs = [DedupJob(recipe, output, buckets, seed, unit=unit) for unit in units]
    bucket_jobs = [DedupJob(recipe, output, buckets, seed, bucket=bucket, units=tuple(units))
                   for bucket in range(buckets)]

    def per_unit(task, suffix: str, kind: str | None) -> None:
        slices = _unit_slices(output, kind, buckets, len(units)) if kind else [()] * len(units)
        run(task, [dataclasses.replace(job, slices=tuple(mine)) for job, mine in zip(unit_jobs, slices)
                   if not unit_file(output, job.unit, suffix).is_file()], f"dedup {task.__name__}", len(units))

    def per_bucket(task, kind: str) -> None:
        run(task, [job for job in bucket_jobs if not _bucket_file(output, kind, job.bucket).is_file()],
            f"dedup {task.__name__}", buckets)

    if dedup.exact:
        per_unit(exact_parts, ".exact.npy", None)
        per_bucket(exact_bucket, "exact")
    per_unit(near_parts, ".near.npy", "exact" if dedup.exact else None)
    if dedup.near:
        per_bucket(near_bucket, "near")
    per_unit(keep_unit, ".dedup.json", "near" if dedup.near else None)
    kinds = [kind for kind, wanted in (("exact", dedup.exact), ("near", dedup.near)) if wanted]
    _save_sharded_index(output, minhash, seed, kinds, buckets)
    counts = Counter({"in": 0, "out": 0, "exact_duplicates": 0, "near_duplicates": 0})
    for unit in units:
        counts.update(read_json(unit_file(output, unit, ".dedup.json")))
    result = dict(sorted(counts.items()))
    write_json(output / "dedup" / "stats.json", result)  # last: the phase is done
    return result


def _unit_slices(output: Location, kind: str, buckets: int, units: int) -> list[list[tuple[int, int]]]:
    """Per unit, per bucket of KIND: the unit's slice [start, stop) of the bucket's duplicate ids."""
    offsets = np.stack([_read_rows(_bucket_file(output, kind, bucket), 0) for bucket in range(buckets)], axis=1)
    return [[(int(start), int(stop)) for start, stop in zip(offsets[unit], offsets[unit + 1])]
            for unit in range(units)]


def _save_sharded_index(output: Location, minhash, seed: Location | None, kinds: list[str], buckets: int) -> None:
    """Write dedup/index: per kind de-duplicated here, the buckets' keys in bucket order; otherwise the seed's."""
    from llmlab.data.dedup import save_index
    from llmlab.data.dedup_sharded import write_concatenated

    kind_of = {"documents": "exact", "bands": "near"}

    def write(name: str, stream) -> None:
        if kind_of.get(name) in kinds:
            files = [(_bucket_file(output, kind_of[name], bucket), 2) for bucket in range(buckets)]
        else:
            files = [(seed / f"{name}.npy", 0)] if seed is not None else []
        total = sum(_array_length(path, record) for path, record in files)
        write_concatenated(stream, (_read_rows(path, record) for path, record in files), total)

    save_index(output / "dedup" / "index", minhash, write)


def _array_length(path: Location, record: int) -> int:
    """The length of the RECORD-th array of a file written by _write_arrays, read from its header."""
    from llmlab.data.dedup_sharded import record_length

    with path.open("rb") as stream:
        return record_length(stream, record)


def _dedup_with_units(output: Location, recipe: PipelineRecipe, units: list[Unit], index) -> Counter:
    """Phase 2 with units: `llmlab data dedup --units` over all units in order; each unit's survivors (their
    repeated lines or sentences removed) are written beside its phase-1 documents, all kept."""
    from llmlab.data.dedup import Deduplicator

    dedup = recipe.dedup
    deduplicator = Deduplicator(dedup.near, unit=dedup.units, index=index)
    counts: Counter = Counter()
    for unit in units:
        phase_one = kept_documents(output, recipe, unit, None, deduplicated=False)
        documents = _counted(deduplicator(_counted(phase_one, counts, "in")), counts, "out")
        written = write_documents(unit_file(output, unit, ".units" + SUFFIXES[recipe.compression]), documents,
                                  recipe.compression)
        with atomic_path(unit_file(output, unit, ".keep.npy")) as staging, staging.open("wb") as stream:
            np.save(stream, np.ones(written, dtype=bool))
    stats = deduplicator.stats
    counts.update({key: stats[key] for key in ("exact_duplicates", "near_duplicates", "duplicate_units")})
    counts["emptied_by_units"] = stats["emptied"]
    return counts


def kept_documents(output: Location, recipe: PipelineRecipe, unit: Unit, keep: np.ndarray | None,
                   deduplicated: bool = True) -> Iterator[dict]:
    """The unit's documents that survived de-duplication (KEEP: the unit's flags, None keeps all); with units, the
    texts phase 2 rewrote (deduplicated=False: the phase-1 documents)."""
    from llmlab.data.jsonl import read_documents

    units = deduplicated and recipe.dedup is not None and recipe.dedup.units is not None
    path = unit_file(output, unit, (".units" if units else "") + SUFFIXES[recipe.compression])
    for position, document in enumerate(read_documents(path)):
        if keep is None or keep[position]:
            yield document


# ------------------------------------------------------------------------------------------------------------
# Phase 3: the tokenizer


def tokenizer_sample(output: Location, recipe: PipelineRecipe, units: list[Unit]) -> Iterator[str]:
    """The first de-duplicated texts in unit order, within the training's max_documents and max_chars."""
    training = recipe.tokenizer.train
    documents = characters = 0
    for unit in units:
        keep = unit_keep(output, unit) if recipe.dedup is not None else None
        for document in kept_documents(output, recipe, unit, keep):
            if training.max_documents is not None and documents >= training.max_documents:
                return
            if training.max_chars is not None and characters + len(document["text"]) > training.max_chars:
                return
            documents += 1
            characters += len(document["text"])
            yield document["text"]


def build_tokenizer(output: Location, recipe: PipelineRecipe, units: list[Unit]) -> Location:
    """Train (or copy) the tokenizer into shards/tokenizer.json, unless a previous run already did."""
    from llmlab.data.tokenizer import (TOKENIZER_FILE, load_tokenizer, objective_special_tokens, save_tokenizer,
                                       train_tokenizer)

    path = output / "shards" / TOKENIZER_FILE
    if path.is_file():
        return path
    section = recipe.tokenizer
    if section.path is not None:
        tokenizer = load_tokenizer(section.path)
    else:
        training = section.train
        specials = (*objective_special_tokens(training.objective), *training.special_tokens)
        tokenizer = train_tokenizer(tokenizer_sample(output, recipe, units), training.vocab_size, training.kind,
                                    special_tokens=specials)
    save_tokenizer(tokenizer, path.parent)
    return path


# ------------------------------------------------------------------------------------------------------------
# Phase 4: tokenisation into shards, per unit

_TOKENIZERS: dict[str, object] = {}


def _tokenizer(path: Location):
    """The tokenizer at PATH, loaded once per process."""
    from llmlab.data.tokenizer import load_tokenizer

    key = f"{path}:{version(path)}"
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = load_tokenizer(path)
    return _TOKENIZERS[key]


def eos_token_id(tokenizer) -> int:
    """The end-of-text id documents end with in the shards."""
    from llmlab.data.tokenizer import END_OF_TEXT

    eos = tokenizer.token_to_id(END_OF_TEXT)
    if eos is None:
        raise DataError(f"the tokenizer has no {END_OF_TEXT} token to end documents with.")
    return eos


class UnitShards:
    """A unit's token shards being written: whole documents, a new shard once one holds tokens_per_shard tokens."""

    def __init__(self, output: Location, unit: Unit, tokenizer, tokens_per_shard: int | None):
        from llmlab.data.shards import token_dtype

        self.directory, self.unit, self.tokenizer, self.limit = output / "shards", unit, tokenizer, tokens_per_shard
        self.eos, self.dtype = eos_token_id(tokenizer), token_dtype(tokenizer.get_vocab_size())
        self.entries, self.pending, self.pending_tokens, self.tokens = [], [], 0, 0

    def encode(self, documents: Iterable[dict]) -> Iterator[dict]:
        """DOCUMENTS unchanged, their texts encoded (a batch at a time) into the shards."""
        documents = iter(documents)
        while batch := list(itertools.islice(documents, ENCODE_BATCH)):
            encodings = self.tokenizer.encode_batch([document["text"] for document in batch], add_special_tokens=False)
            for document, encoding in zip(batch, encodings):
                self.pending.append(encoding.ids)
                self.pending_tokens += len(encoding.ids) + 1  # and the end-of-text id
                if self.limit is not None and self.pending_tokens >= self.limit:
                    self._flush()
                yield document

    def _flush(self) -> None:
        from llmlab.data.shards import write_shard

        name = f"{self.unit.key.replace('/', '--')}-{len(self.entries):05d}"
        self.entries.append(write_shard(self.directory, name, self.pending, self.dtype, self.eos))
        self.tokens += self.pending_tokens
        self.pending, self.pending_tokens = [], 0

    def close(self) -> list[dict]:
        """Write the last shard; return the index entries of the unit's shards."""
        if self.pending or not self.entries:
            self._flush()
        return self.entries


def finish_unit(job: Job) -> dict:
    """Phase 4 for one unit: its cleaned, de-duplicated documents and, with a tokenizer, its token shards."""
    recipe, unit, output = job.recipe, job.unit, job.output
    documents = kept_documents(output, recipe, unit, unit_keep(output, unit) if recipe.dedup is not None else None)
    shards = None
    if recipe.tokenizer is not None:
        tokenizer = _tokenizer(output / "shards" / "tokenizer.json")
        shards = UnitShards(output, unit, tokenizer, recipe.shards.tokens_per_shard)
        documents = shards.encode(documents)
    written = write_documents(output / "documents" / (unit.key + SUFFIXES[recipe.compression]), documents,
                              recipe.compression)
    entries = shards.close() if shards is not None else []
    result = {"unit": unit.key, "documents": written, "tokens": shards.tokens if shards else 0, "shards": entries}
    write_json(unit_file(output, unit, ".finished.json"), result)  # last: the unit is done
    return result


def unit_keep(output: Location, unit: Unit) -> np.ndarray:
    """Which of the unit's phase-1 documents de-duplication kept."""
    return load_array(unit_file(output, unit, ".keep.npy"))


# ------------------------------------------------------------------------------------------------------------
# Running the phases


def _run_tasks(executor, function: Callable, jobs: list, description: str, total: int, progress: bool) -> int:
    """Run FUNCTION on every job through EXECUTOR, with a progress bar over the TOTAL tasks; return how many ran."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=total - len(jobs), desc=description, unit="task", disable=not progress) as bar:
        for _ in executor.map(function, jobs):
            bar.update()
    return len(jobs)


def _check_shared(recipe: PipelineRecipe, output: str | os.PathLike, executor: str) -> None:
    """Refuse memory:// locations (one process's memory) where tasks run in other processes (workers > 1, Ray)."""
    if executor == "local" and recipe.workers == 1:
        return
    places = [output, *(source.path for source in recipe.sources), recipe.dedup.index if recipe.dedup else None,
              recipe.tokenizer.path if recipe.tokenizer else None]
    for place in filter(None, places):
        if is_remote(remote := location(place)) and "memory" in remote.fs.protocol:
            raise ConfigError(f"{place} lives in this process's memory, which other worker processes cannot see; "
                              "run it with workers: 1 and the local executor, or use a shared filesystem.")


def _check_recipe(output: Location, recipe: PipelineRecipe) -> None:
    """Record the recipe in OUTPUT, or refuse an OUTPUT made with another recipe (its work files would be reused)."""
    data = recipe.to_dict()
    data.pop("workers"), data.pop("output")
    path = output / "recipe.json"
    if path.is_file() and read_json(path) != json.loads(json.dumps(data)):
        raise ConfigError(f"the output directory {output} was made with another recipe; give another output.")
    if not path.is_file():
        write_json(path, data)


def run_pipeline(recipe: PipelineRecipe, output: str | os.PathLike | None = None, progress: bool = True,
                 executor: str = "local", address: str | None = None) -> dict:
    """Run (or finish) the whole pipeline into OUTPUT (default: the recipe's output) with the EXECUTOR (local or ray,
    ADDRESS: a Ray cluster to join) and recipe.workers workers; return the report."""
    from llmlab.data.executors import make_executor

    if output is None and recipe.output is None:
        raise ConfigError("the recipe names no output directory; give output: in the recipe or --out.")
    output = output if output is not None else recipe.output
    _check_shared(recipe, output, executor)
    output = location(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"the pipeline's output {output} is a file, not a directory; choose another output.")
    started = time.perf_counter()
    runner = make_executor(executor, recipe.workers, address)
    try:
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output)
        _check_recipe(output, recipe)
        report = _run_phases(recipe, output, plan_units(recipe), runner, progress)
    finally:
        runner.close()
    seconds = report["seconds"]
    seconds["total"] = round(time.perf_counter() - started, 3)
    report["documents_per_second"] = round(report["stages"][0]["out"] / max(seconds["total"], 1e-9), 1)
    write_report(output, report)
    remove_stale_temporaries(output)
    return report


def _run_phases(recipe: PipelineRecipe, output: Location, units: list[Unit], executor, progress: bool) -> dict:
    """Phases 1 to 5 (see the module's docstring); the report without the total time."""
    seconds, tasks = {}, {}

    def run(function: Callable, jobs: list, description: str, total: int, phase: str) -> None:
        done = _run_tasks(executor, function, jobs, description, total, progress)
        tasks[phase] = [a + b for a, b in zip(tasks.get(phase, (0, 0)), (total, done))]

    phase = time.perf_counter()
    pending = [unit for unit in units if not unit_file(output, unit, ".clean.json").is_file()]
    run(clean_unit, [Job(recipe, output, unit) for unit in pending], "clean", len(units), "clean")
    unit_stats = [read_json(unit_file(output, unit, ".clean.json")) for unit in units]
    seconds["clean"] = time.perf_counter() - phase

    phase = time.perf_counter()
    dedup_stats = None
    if recipe.dedup is not None:
        if not (output / "dedup" / "stats.json").is_file():
            global_dedup(output, recipe, units, unit_stats,
                         lambda function, jobs, description, total: run(function, jobs, description, total, "dedup"))
        dedup_stats = read_json(output / "dedup" / "stats.json")
    seconds["dedup"] = time.perf_counter() - phase

    if recipe.tokenizer is not None:
        phase = time.perf_counter()
        build_tokenizer(output, recipe, units)
        seconds["tokenizer"] = time.perf_counter() - phase

    phase = time.perf_counter()
    pending = [unit for unit in units if not unit_file(output, unit, ".finished.json").is_file()]
    phase_name = "tokenize" if recipe.tokenizer is not None else "write"
    run(finish_unit, [Job(recipe, output, unit) for unit in pending], phase_name, len(units), phase_name)
    finished = [read_json(unit_file(output, unit, ".finished.json")) for unit in units]
    if recipe.tokenizer is not None:
        _write_shard_index(output, finished)
    seconds[phase_name] = time.perf_counter() - phase
    return build_report(recipe, units, unit_stats, dedup_stats, finished, seconds,
                        {"executor": executor.name, "workers": executor.workers, "tasks": tasks})


def _write_shard_index(output: Location, finished: list[dict]) -> None:
    """Write shards/index.json: every unit's shards in unit order."""
    from llmlab.data.shards import write_index

    tokenizer = _tokenizer(output / "shards" / "tokenizer.json")
    entries = [entry for unit in finished for entry in unit["shards"]]
    write_index(output / "shards", entries, tokenizer.get_vocab_size(), eos_token_id(tokenizer),
                tokenizer="tokenizer.json")
