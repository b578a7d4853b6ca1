"""MinHash de-duplication: llmlab against datatrove's MinHash pipeline (spaCy and whitespace words), one corpus, one core.

The corpus (tests/data/test_dedup.py's planted_corpus: random documents of 100–200 words, about 1 kB, plus planted
near-duplicates of shingle Jaccard ≥ 0.8 and exact copies, each after its source) is written as JSONL. Then, in
ROUNDS interleaved rounds (the order rotates each round, so a load change hits all alike), each of these reads that
JSONL and writes the documents it keeps as JSONL, on one core:

* llmlab: `dedup_jsonl(near=True)` (`llmlab data dedup --near`): exact + MinHash-LSH de-duplication;
* datatrove, its defaults: signature → buckets → cluster → filter (one worker; 5-grams, 14 buckets × 8 hashes,
  words by spaCy's English tokenizer);
* datatrove, whitespace words: the same pipeline with `MinhashDedupSignature(language=...)` given a WordTokenizer
  whose word_tokenize is `str.split` (datatrove's own WhitespaceTokenizer still runs spaCy's "xx" tokenizer). Its
  text normalisation (lower case, punctuation removed, whitespace collapsed) runs before the tokenizer in both.

datatrove runs in another interpreter (`--datatrove-python`, default $DATATROVE_PYTHON or /tmp/dtvenv/bin/python)
because it is not one of llmlab's dependencies; its time is the four stages' total (interpreter start and imports
excluded, as for llmlab). Besides, signatures alone on the texts in memory: llmlab's `MinHash.signatures` against
datatrove's `get_signature(get_shingles(text))` per text (tokenisation, shingle hashing, 112 minima), both tokenizers.

Accuracy is counted by duplicate group (an original with its planted near-duplicates and exact copies): a group is
resolved when exactly one member is kept (whichever), under-removed when more than one is, over-removed when none is;
and distinct documents in no group that were removed (false positives).

    OMP_NUM_THREADS=1 python benchmarks/bench_dedup.py --documents 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.data.test_dedup's corpus generator

from llmlab.data.dedup import MinHash, dedup_jsonl  # noqa: E402
from tests.data.test_dedup import planted_corpus  # noqa: E402

DATATROVE_SCRIPT = r'''
import json, sys, time
from importlib.metadata import version
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer


class SplitTokenizer(WordTokenizer):
    """Words are the whitespace-separated pieces of the (already normalised) text."""

    def word_tokenize(self, text):
        return text.split()

    def sent_tokenize(self, text):
        return [text]

    def span_tokenize(self, text):
        return [(0, len(text))]


corpus, work, words, signatures_only = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
language = SplitTokenizer() if words == "whitespace" else "en"  # "en" is MinhashDedupSignature's default
config = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes
reader = lambda: JsonlReader(str(corpus.parent), glob_pattern=corpus.name)
result = {"version": version("datatrove")}
if signatures_only:
    texts = [json.loads(line)["text"] for line in corpus.open()]
    step = MinhashDedupSignature(output_folder=str(work / "unused"), config=config, language=language)
    step.get_signature(step.get_shingles(texts[0]))  # loads spaCy, if used
    started = time.perf_counter()
    for text in texts:
        step.get_signature(step.get_shingles(text))
    result["signature_seconds"] = time.perf_counter() - started
else:
    stages = [
        ("signature", [reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config, language=language)], 1),
        ("buckets", [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)],
         config.num_buckets),  # the bucket stage needs a task count divisible by the number of buckets
        ("cluster", [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)], 1),
        ("filter", [reader(), MinhashDedupFilter(input_folder=str(work / "remove")),
                    JsonlWriter(str(work / "out"), compression=None)], 1),
    ]
    result["seconds"] = {}
    for name, pipeline, tasks in stages:
        started = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()
        result["seconds"][name] = time.perf_counter() - started
    result["kept"] = [json.loads(line)["id"] for path in sorted((work / "out").glob("*.jsonl")) for line in path.open()]
print(json.dumps(result))
'''

TOOLS = ("llmlab", "datatrove spaCy", "datatrove whitespace")


def group_outcomes(corpus: list[dict], kept_ids: set[int]) -> dict[str, int]:
    """Count duplicate groups (an original and its planted copies) by how many members were kept, and removed singletons.

    resolved: exactly one member kept (original_kept: of those, the one kept is the original); under: more than one
    kept; over: none kept; singletons_removed: distinct documents without planted copies that were removed.
    """
    members = defaultdict(list)
    for record in corpus:
        members[record["source"]].append(record["id"])
    counts = dict.fromkeys(("groups", "resolved", "original_kept", "under", "over", "singletons", "singletons_removed"), 0)
    for source, ids in members.items():
        kept = sum(identifier in kept_ids for identifier in ids)
        if len(ids) == 1:
            counts["singletons"] += 1
            counts["singletons_removed"] += kept == 0
            continue
        counts["groups"] += 1
        counts["resolved"] += kept == 1
        counts["original_kept"] += kept == 1 and source in kept_ids
        counts["under"] += kept > 1
        counts["over"] += kept == 0
    return counts


def run_datatrove(python: str, script: Path, corpus_path: Path, work: Path, words: str, signatures_only: bool = False) -> dict:
    """Run the datatrove script in PYTHON with WORDS ("spacy" | "whitespace"); return what it printed."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([python, str(script), str(corpus_path), str(work), words, str(int(signatures_only))],
                               capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"datatrove failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def llmlab_signature_seconds(texts: list[str], batch: int = 1024) -> float:
    """Seconds for llmlab's MinHash signatures of TEXTS in memory, in batches of BATCH."""
    minhash = MinHash()
    minhash.signatures(texts[:batch])  # warm the power tables
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        minhash.signatures(texts[start : start + batch])
    return time.perf_counter() - started


def main() -> None:
    """Generate the corpus, run the three pipelines in interleaved rounds, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=5000, help="distinct documents (default 5000)")
    parser.add_argument("--near", type=float, default=0.1, help="planted near-duplicates per distinct document (default 0.1)")
    parser.add_argument("--exact", type=float, default=0.05, help="planted exact copies per distinct document (default 0.05)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three pipelines (default 3)")
    parser.add_argument("--no-signatures", action="store_true", help="skip the in-memory signature comparison")
    parser.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON", "/tmp/dtvenv/bin/python"),
                        help="interpreter with datatrove[processing] and spacy installed")
    arguments = parser.parse_args()

    corpus = planted_corpus(arguments.documents, int(arguments.documents * arguments.near),
                            int(arguments.documents * arguments.exact), seed=0)
    texts = [record["text"] for record in corpus]
    mean_bytes = sum(len(text.encode()) for text in texts) / len(corpus)
    print(f"corpus: {len(corpus)} documents, mean {mean_bytes:.0f} bytes; "
          f"planted {sum(r['kind'] == 'near' for r in corpus)} near-duplicates (Jaccard >= 0.8), "
          f"{sum(r['kind'] == 'exact' for r in corpus)} exact copies", flush=True)
    seconds, kept, stages = defaultdict(list), {}, defaultdict(lambda: defaultdict(list))
    signature_seconds, version = defaultdict(list), "?"
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        corpus_path = work / "corpus.jsonl"
        corpus_path.write_text("".join(json.dumps({**record, "id": str(record["id"])}) + "\n" for record in corpus))
        script = work / "datatrove_minhash.py"
        script.write_text(DATATROVE_SCRIPT)
        for round_number in range(arguments.rounds):
            order = TOOLS[round_number % 3 :] + TOOLS[: round_number % 3]
            for tool in order:
                out = work / f"round{round_number}" / tool.replace(" ", "_")
                out.mkdir(parents=True)
                if tool == "llmlab":
                    started = time.perf_counter()
                    dedup_jsonl(corpus_path, out / "kept.jsonl", near=True)
                    seconds[tool].append(time.perf_counter() - started)
                    ids = {int(json.loads(line)["id"]) for line in (out / "kept.jsonl").open()}
                else:
                    result = run_datatrove(arguments.datatrove_python, script, corpus_path, out, tool.split()[1].lower())
                    version = result["version"]
                    seconds[tool].append(sum(result["seconds"].values()))
                    for name, value in result["seconds"].items():
                        stages[tool][name].append(value)
                    ids = {int(identifier) for identifier in result["kept"]}
                if kept.setdefault(tool, ids) != ids:
                    raise SystemExit(f"{tool} kept different documents in round {round_number + 1}")
            print(f"round {round_number + 1}: " + ", ".join(f"{tool} {len(corpus) / seconds[tool][-1]:.0f} docs/s"
                                                             for tool in TOOLS), flush=True)
            if not arguments.no_signatures:
                for tool in order:
                    if tool == "llmlab":
                        signature_seconds[tool].append(llmlab_signature_seconds(texts))
                    else:
                        result = run_datatrove(arguments.datatrove_python, script, corpus_path, work / "unused",
                                               tool.split()[1].lower(), signatures_only=True)
                        signature_seconds[tool].append(result["signature_seconds"])

    print(f"\nend to end (JSONL in, JSONL out), {arguments.rounds} interleaved rounds; datatrove {version}")
    print("| pipeline | docs/s per round | median docs/s | groups resolved | under-removed | over-removed "
          "| singletons removed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for tool in TOOLS:
        rates = [len(corpus) / value for value in seconds[tool]]
        outcome = group_outcomes(corpus, kept[tool])
        name = "llmlab dedup --near" if tool == "llmlab" else f"datatrove {version}, {tool.split()[1]} words"
        print(f"| {name} | {' '.join(f'{rate:.0f}' for rate in rates)} | {statistics.median(rates):.0f} "
              f"| {outcome['resolved']} / {outcome['groups']} | {outcome['under']} | {outcome['over']} "
              f"| {outcome['singletons_removed']} / {outcome['singletons']} |")
    for tool in TOOLS:
        outcome = group_outcomes(corpus, kept[tool])
        print(f"{tool}: kept {len(kept[tool])}; in {outcome['resolved'] - outcome['original_kept']} resolved groups "
              "the member kept is a copy, not the original")
    for tool in TOOLS[1:]:
        print(f"{tool} stages, median s: " + ", ".join(f"{name} {statistics.median(values):.2f}"
                                                       for name, values in stages[tool].items()))
        ratios = [theirs / ours for ours, theirs in zip(seconds["llmlab"], seconds[tool])]
        print(f"llmlab / {tool}, end to end, per round: {' '.join(f'{r:.1f}x' for r in ratios)}; "
              f"median {statistics.median(ratios):.1f}x")
    print(f"datatrove spaCy and whitespace kept the same documents: {kept[TOOLS[1]] == kept[TOOLS[2]]}")
    if signature_seconds:
        print("\nsignatures only (texts in memory: tokenise, hash shingles, 112 minima; no LSH, no I/O)")
        print("| signatures | docs/s per round | median docs/s |")
        print("|---|---|---:|")
        for tool in TOOLS:
            rates = [len(corpus) / value for value in signature_seconds[tool]]
            name = "llmlab MinHash.signatures (batches of 1024)" if tool == "llmlab" else \
                f"datatrove {version} get_signature(get_shingles(text)), {tool.split()[1]} words"
            print(f"| {name} | {' '.join(f'{rate:.0f}' for rate in rates)} | {statistics.median(rates):.0f} |")
        for tool in TOOLS[1:]:
            ratios = [theirs / ours for ours, theirs in zip(signature_seconds["llmlab"], signature_seconds[tool])]
            print(f"llmlab / {tool}, signatures, per round: {' '.join(f'{r:.1f}x' for r in ratios)}; "
                  f"median {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
