"""MinHash de-duplication: llmlab against datatrove's MinHash pipeline on one generated corpus, one process each.

The corpus (tests/data/test_dedup.py's planted_corpus: random documents of 100–200 words, about 1 kB, plus planted
near-duplicates of shingle Jaccard ≥ 0.8 and exact copies) is written as JSONL; then, in one invocation:

* llmlab end to end: `dedup_jsonl(--near)` — read JSONL, exact + MinHash-LSH de-duplication, write JSONL;
* llmlab MinHash alone: signatures, band keys and LSH lookup on the texts in memory;
* datatrove 0.10.1 (signature → buckets → cluster → filter, one worker; default 5-grams, 14 buckets × 8 hashes),
  run by another interpreter (`--datatrove-python`, default $DATATROVE_PYTHON or /tmp/dtvenv/bin/python) because
  datatrove is not one of llmlab's dependencies. Its time is the four stages' total, JSONL in and out included.

Each reports documents/s (one core) and the share of planted near-duplicates, exact copies and distinct documents
that it removed.

    OMP_NUM_THREADS=1 python benchmarks/bench_dedup.py --documents 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.data.test_dedup's corpus generator

from llmlab.data.dedup import KeySet, MinHash, dedup_jsonl, mark_duplicates  # noqa: E402
from tests.data.test_dedup import planted_corpus, removal_rates  # noqa: E402

DATATROVE_SCRIPT = r'''
import json, sys, time
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
config = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes
reader = lambda: JsonlReader(str(corpus.parent), glob_pattern=corpus.name)
stages = [
    ("signature", [reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)], 1),
    ("buckets", [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)],
     config.num_buckets),  # the bucket stage needs a task count divisible by the number of buckets
    ("cluster", [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)], 1),
    ("filter", [reader(), MinhashDedupFilter(input_folder=str(work / "remove")),
                JsonlWriter(str(work / "out"), compression=None)], 1),
]
seconds = {}
for name, pipeline, tasks in stages:
    started = time.perf_counter()
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()
    seconds[name] = time.perf_counter() - started
kept = [json.loads(line)["id"] for path in sorted((work / "out").glob("*.jsonl")) for line in path.open()]
print(json.dumps({"seconds": seconds, "kept": kept}))
'''


def llmlab_minhash_only(texts: list[str], batch: int = 1024) -> tuple[float, int]:
    """Seconds for MinHash signatures + LSH on TEXTS in memory, and how many were marked near-duplicate."""
    minhash, seen, removed = MinHash(), KeySet(), 0
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        signatures, has_signature = minhash.signatures(texts[start : start + batch])
        removed += int(mark_duplicates(minhash.band_keys(signatures), seen, has_signature).sum())
    return time.perf_counter() - started, removed


def run_datatrove(python: str, corpus_path: Path, work: Path) -> tuple[dict, set[str]]:
    """Run datatrove's MinHash pipeline in PYTHON; return its per-stage seconds and the ids it kept."""
    script = work / "datatrove_minhash.py"
    script.write_text(DATATROVE_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([python, str(script), str(corpus_path), str(work / "datatrove")], capture_output=True,
                               text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"datatrove failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return result["seconds"], set(result["kept"])


def main() -> None:
    """Generate the corpus, run both, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000, help="distinct documents (default 20000)")
    parser.add_argument("--near", type=float, default=0.1, help="planted near-duplicates per distinct document (default 0.1)")
    parser.add_argument("--exact", type=float, default=0.05, help="planted exact copies per distinct document (default 0.05)")
    parser.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON", "/tmp/dtvenv/bin/python"),
                        help="interpreter with datatrove[processing]==0.10.1 and spacy installed ('' to skip)")
    arguments = parser.parse_args()

    corpus = planted_corpus(arguments.documents, int(arguments.documents * arguments.near),
                            int(arguments.documents * arguments.exact), seed=0)
    mean_bytes = sum(len(record["text"].encode()) for record in corpus) / len(corpus)
    print(f"corpus: {len(corpus)} documents, mean {mean_bytes:.0f} bytes; "
          f"planted {sum(r['kind'] == 'near' for r in corpus)} near-duplicates (Jaccard >= 0.8), "
          f"{sum(r['kind'] == 'exact' for r in corpus)} exact copies")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        corpus_path = work / "corpus.jsonl"
        corpus_path.write_text("".join(json.dumps({**record, "id": str(record["id"])}) + "\n" for record in corpus))

        started = time.perf_counter()
        dedup_jsonl(corpus_path, work / "llmlab.jsonl", near=True)
        seconds = time.perf_counter() - started
        kept = {int(json.loads(line)["id"]) for line in (work / "llmlab.jsonl").open()}
        rows.append(("llmlab dedup --near (JSONL in/out, exact + MinHash)", seconds, removal_rates(corpus, kept)))

        seconds, _ = llmlab_minhash_only([record["text"] for record in corpus])
        rows.append(("llmlab MinHash-LSH only (in memory)", seconds, None))

        if arguments.datatrove_python:
            stage_seconds, kept = run_datatrove(arguments.datatrove_python, corpus_path, work)
            rows.append(("datatrove 0.10.1 MinHash (4 stages, JSONL in/out)", sum(stage_seconds.values()),
                         removal_rates(corpus, {int(identifier) for identifier in kept})))
            print("datatrove stages (s): " + ", ".join(f"{name} {value:.1f}" for name, value in stage_seconds.items()))

    print(f"\n| {'pipeline':<52} | {'docs/s':>8} | {'near removed':>12} | {'exact removed':>13} | {'distinct removed':>16} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 14}|{'-' * 15}|{'-' * 18}|")
    for name, seconds, rates in rows:
        cells = [f"{rates[k]:.2%}" for k in ("near", "exact", "distinct")] if rates else ["", "", ""]
        print(f"| {name:<52} | {len(corpus) / seconds:>8.0f} | {cells[0]:>12} | {cells[1]:>13} | {cells[2]:>16} |")
    if arguments.datatrove_python:
        theirs = len(corpus) / rows[-1][1]
        print(f"\nllmlab / datatrove throughput: end to end {len(corpus) / rows[0][1] / theirs:.1f}x, "
              f"MinHash only {len(corpus) / rows[1][1] / theirs:.1f}x")


if __name__ == "__main__":
    main()
