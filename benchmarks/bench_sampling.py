"""Logits processing per decode step: llmlab's process_logits against transformers' LogitsProcessorList on the same
logits and histories, for n-gram blocking alone (vectorised here, a Python loop over rows and n-grams there) and
for every option together, side by side in one run.

    .venv/bin/python benchmarks/bench_sampling.py --device cpu
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmlab.infer.config import GenerationConfig
from llmlab.infer.sampling import TokenCounts, process_logits

SETUPS = {
    "no_repeat_ngram_size=3": (dict(no_repeat_ngram_size=3), lambda: [NoRepeatNGramLogitsProcessor(3)]),
    "all (rep 1.2, ngram 3, T 0.8, top-k 50, top-p 0.9, min-p 0.05)": (
        dict(do_sample=True, repetition_penalty=1.2, no_repeat_ngram_size=3, temperature=0.8, top_k=50, top_p=0.9,
             min_p=0.05),
        lambda: [RepetitionPenaltyLogitsProcessor(1.2), NoRepeatNGramLogitsProcessor(3), TemperatureLogitsWarper(0.8),
                 TopKLogitsWarper(50), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]),
}


def seconds_per_call(call, device: str, repeats: int) -> float:
    """The median wall time of one call, after a warm-up."""
    call()
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    """Time both for each setup, batch size and history length and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    device = arguments.device
    generator = torch.Generator().manual_seed(0)
    print("| setup | batch | history | llmlab ms | transformers ms | ratio |\n|---|---:|---:|---:|---:|---:|")
    for name, (options, processors) in SETUPS.items():
        config, hf = GenerationConfig(**options), LogitsProcessorList(processors())
        for batch, length in [(1, 256), (8, 512), (32, 1024), (64, 2048)]:
            logits = torch.randn(batch, arguments.vocab, generator=generator).to(device)
            history = torch.randint(0, 200, (batch, length), generator=generator).to(device)
            counts = TokenCounts.start(config, history, arguments.vocab)
            ours = seconds_per_call(lambda: process_logits(logits, config, counts, history), device, arguments.repeats)
            theirs = seconds_per_call(lambda: hf(history, logits.clone()), device, arguments.repeats)
            print(f"| {name} | {batch} | {length} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | {theirs / ours:.1f}x |")


if __name__ == "__main__":
    main()
