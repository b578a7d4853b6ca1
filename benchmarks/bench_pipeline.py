"""The data pipeline end to end (`llmlab data run`): documents/s with 1 and 2 worker processes on one generated corpus.

The corpus: FILES JSONL files of English-like documents (stop words mixed with random words, in sentences, about
1 kB each) that mostly pass the quality rules, with 5% exact copies, 5% near copies (one word changed) and 5%
holding an e-mail address. The recipe: all heuristic rule sets (Gopher repetition and quality, C4, FineWeb), PII,
exact + MinHash near de-duplication, a byte-level BPE tokenizer (4096) trained on at most 20,000 documents,
shards of 10M tokens. Each worker count runs into a fresh output directory; the time is the whole run, worker
start-up included. The table gives documents/s read (wall clock), the CPU seconds of the run (this process and its
workers: on a shared machine the fairer figure) and per-phase seconds.

    OMP_NUM_THREADS=1 python benchmarks/bench_pipeline.py --files 16 --documents 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import recipe_from_dict

STOP_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
              "an they you were her she there one all we can their has been if more when will would who so no").split()


def generate_corpus(directory: Path, files: int, documents: int, seed: int = 0) -> int:
    """Write FILES JSONL files of DOCUMENTS documents each; return the number of documents."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20000)]
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file in range(files):
        with open(directory / f"part-{file:04d}.jsonl", "w") as stream:
            for index in range(documents):
                draw = rng.random()
                if draw < 0.05 and written:
                    text = rng.choice(written)
                elif draw < 0.10 and written:
                    tokens = rng.choice(written).split(" ")
                    tokens[len(tokens) // 2] = rng.choice(vocabulary)
                    text = " ".join(tokens)
                else:
                    sentences = []
                    for _ in range(rng.randint(6, 12)):
                        words = [rng.choice(STOP_WORDS) if rng.random() < 0.5 else rng.choice(vocabulary)
                                 for _ in range(rng.randint(8, 20))]
                        sentences.append(" ".join(words).capitalize() + ".")
                    text = "\n".join(" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3))
                    if draw < 0.15:
                        text += f" Contact me at user{index}@example.org for details."
                written.append(text)
                stream.write(json.dumps({"text": text, "id": f"{file}-{index}"}) + "\n")
    return files * documents


def recipe(corpus: Path, workers: int) -> dict:
    """The benchmarked pipeline."""
    return {"sources": [{"path": str(corpus), "name": "generated"}],
            "stages": [{"filter": {"rules": "gopher-repetition,gopher-quality,c4,fineweb"}}, "pii",
                       {"dedup": {"near": True}}],
            "tokenizer": {"train": {"kind": "byte_bpe", "vocab_size": 4096, "max_documents": 20000}},
            "shards": {"tokens_per_shard": 10_000_000}, "workers": workers}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pipeline's workers)."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16, help="JSONL files (units) in the corpus")
    parser.add_argument("--documents", type=int, default=1000, help="documents per file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        total = generate_corpus(scratch / "corpus", arguments.files, arguments.documents)
        megabytes = sum(path.stat().st_size for path in (scratch / "corpus").iterdir()) / 1e6
        print(f"corpus: {total} documents, {megabytes:.1f} MB of JSONL in {arguments.files} files; "
              f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
        print("| workers | documents/s | seconds | CPU seconds | clean | dedup | tokenizer | tokenize | kept "
              "| tokens |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workers in arguments.workers:
            cpu, started = cpu_seconds(), time.perf_counter()
            report = run_pipeline(recipe_from_dict(recipe(scratch / "corpus", workers)), scratch / f"out-{workers}",
                                  progress=False)
            seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
            phases = report["seconds"]
            print(f"| {workers} | {total / seconds:,.0f} | {seconds:.1f} | {cpu:.1f} | {phases['clean']:.1f} "
                  f"| {phases['dedup']:.1f} | {phases['tokenizer']:.1f} | {phases['tokenize']:.1f} "
                  f"| {report['documents']} | {report['tokens']} |")


if __name__ == "__main__":
    main()
