"""The data pipeline as the corpus grows (1×, 4×, 16×): documents/s of the whole run and of its de-duplication
phase, local worker processes against Ray, and the peak memory of every process (the driver and each worker).

The corpus: the first DOCUMENTS documents of the bundled corpus (llmlab.data.corpus: the standard library's
docstrings) are 1×; N× holds N copies of them, copy 0 as it is and every later copy of each document, drawn at
random, either an exact duplicate (other case and spacing), a near duplicate (one word replaced) or a new document
(its words shuffled). Files hold FILE_DOCUMENTS documents each, so the units stay the same size and only their
number grows. The recipe: PII, exact + MinHash near de-duplication, a byte-level BPE tokenizer (1024) trained on at
most 2,000 documents, one token shard per unit.

Each (scale, executor) runs in a fresh child process (so that its peak memory is its own); a thread there reads
VmHWM (the peak resident set) from /proc/PID/status of every process below it every 100 ms: the driver (the child
itself), the local executor's spawned workers, Ray's worker processes (those titled ray::…) and Ray's own services
(raylet, GCS, its agents, …), reported apart. Ray's local instance starts inside the run: its start-up is in the total.

    OMP_NUM_THREADS=1 python benchmarks/bench_data_scale.py --documents 2000 --scales 1 4 16 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FILE_DOCUMENTS = 500
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # Ray's services titled as its workers are


def build_corpus(directory: Path, documents: int, scale: int, seed: int = 0) -> int:
    """Write SCALE perturbed copies of the first DOCUMENTS bundled documents as JSONL files; return how many."""
    from llmlab.data.corpus import bundled_documents

    base = [document["text"] for document in bundled_documents(None)[:documents]]
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    texts = []
    for copy in range(scale):
        for text in base:
            words = text.split()
            draw = rng.random()
            if copy == 0:
                texts.append(text)
            elif draw < 0.4:
                texts.append("  " + text.upper().replace(" ", "   "))
            elif draw < 0.7:
                words[rng.randrange(len(words))] = f"changed{rng.randrange(10**6)}"
                texts.append(" ".join(words))
            else:
                rng.shuffle(words)
                texts.append(" ".join(words))
    for start in range(0, len(texts), FILE_DOCUMENTS):
        with open(directory / f"part-{start // FILE_DOCUMENTS:05d}.jsonl", "w") as stream:
            for index, text in enumerate(texts[start:start + FILE_DOCUMENTS], start):
                stream.write(json.dumps({"text": text, "id": index}) + "\n")
    return len(texts)


def recipe(corpus: Path, workers: int) -> dict:
    """The benchmarked pipeline."""
    return {"sources": [{"path": str(corpus), "name": "bundled-copies"}],
            "stages": ["pii", {"dedup": {"near": True}}],
            "tokenizer": {"train": {"kind": "byte_bpe", "vocab_size": 1024, "max_documents": 2000}},
            "workers": workers}


def peak_kib(pid: int) -> tuple[int, str] | None:
    """The process's VmHWM in KiB and its command line, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]), command
    return None


def descendants(root: int) -> list[int]:
    """Every process below ROOT."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class PeakMemory:
    """A thread recording the highest VmHWM seen of every process below this one, and how each was titled."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peaks, self.titles, self.running = interval, {}, {}, True
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self) -> None:
        while self.running:
            for pid in descendants(os.getpid()):
                seen = peak_kib(pid)
                if seen is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), seen[0])
                    if pid not in self.titles or seen[1].startswith("ray::"):  # Ray titles its workers later
                        self.titles[pid] = seen[1]
            time.sleep(self.interval)

    def stop(self) -> dict[str, list[int]]:
        """Peak MiB per kind of process: workers (the executor's), ray services, others."""
        self.running = False
        self.thread.join()
        kinds: dict[str, list[int]] = {"workers": [], "ray services": [], "others": []}
        for pid, kib in self.peaks.items():
            title = self.titles.get(pid, "")
            if title.startswith(RAY_AGENTS):
                kind = "ray services"
            elif title.startswith("ray::") or "spawn_main" in title or "default_worker.py" in title:
                kind = "workers"
            elif "ray" in title:
                kind = "ray services"
            else:
                kind = "others"
            kinds[kind].append(round(kib / 1024))
        return {kind: sorted(values) for kind, values in kinds.items()}


def run_one(corpus: Path, out: Path, executor: str, workers: int) -> dict:
    """One run in this process: the report's figures and the peak memory of every process."""
    from llmlab.data.pipeline import run_pipeline
    from llmlab.data.pipeline_recipe import recipe_from_dict

    watcher = PeakMemory()
    report = run_pipeline(recipe_from_dict(recipe(corpus, workers)), out, progress=False, executor=executor)
    memory = watcher.stop()
    memory["driver"] = [round(peak_kib(os.getpid())[0] / 1024)]
    dedup = next(stage for stage in report["stages"] if stage["stage"] == "dedup")
    return {"read": report["stages"][0]["out"], "dedup_in": dedup["in"], "kept": report["documents"],
            "seconds": report["seconds"], "tasks": report["tasks"], "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=2000, help="bundled documents in the 1× corpus")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--executors", nargs="+", default=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("CORPUS", "OUT", "EXECUTOR"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one:
        corpus, out, executor = arguments.one
        print(json.dumps(run_one(Path(corpus), Path(out), executor, arguments.workers)))
        return
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {arguments.workers} workers, "
          f"1× = {arguments.documents} bundled documents, {FILE_DOCUMENTS} documents per unit")
    print("| scale | documents | units | executor | documents/s | dedup documents/s | total s | start-up s | clean s "
          "| dedup s | tokenizer s | tokenize s | driver MiB | worker MiB (each) | ray services MiB (max) |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for scale in arguments.scales:
            corpus = Path(scratch) / f"corpus-{scale}"
            total = build_corpus(corpus, arguments.documents, scale)
            for executor in arguments.executors:
                out = Path(scratch) / f"out-{scale}-{executor}"
                child = subprocess.run([sys.executable, __file__, "--workers", str(arguments.workers),
                                        "--one", str(corpus), str(out), executor],
                                       check=True, capture_output=True, text=True)
                result = json.loads(child.stdout.strip().splitlines()[-1])
                seconds, memory = result["seconds"], result["memory"]
                startup = seconds["total"] - sum(value for key, value in seconds.items() if key != "total")
                services = max(memory["ray services"], default=0)
                print(f"| {scale}× | {total:,} | {result['tasks']['clean'][0]} | {executor} "
                      f"| {result['read'] / seconds['total']:,.0f} | {result['dedup_in'] / seconds['dedup']:,.0f} "
                      f"| {seconds['total']:.1f} | {startup:.1f} | {seconds['clean']:.1f} | {seconds['dedup']:.1f} "
                      f"| {seconds['tokenizer']:.1f} | {seconds['tokenize']:.1f} | {memory['driver'][0]} "
                      f"| {', '.join(map(str, memory['workers']))} | {services or '–'} |", flush=True)


if __name__ == "__main__":
    main()
