"""Serving throughput: llmlab's continuous-batching engine against transformers' generate in static batches of the
same size, on the same weights and the same requests, in one process.

nano-vllm's workload scaled to a CPU: N requests (64 by default) whose prompt and output lengths are drawn uniformly
from 16–256, EOS ignored so that every request produces its requested tokens, a random-weight GPT-2 124M (llmlab
writes it with save_hf, transformers reads it with from_pretrained). All requests arrive at once.

- llmlab: an Engine with max_num_seqs = the batch size; each request stops at its own output length and a waiting one
  takes its place at the next step. Run twice: with the linear weights prepacked for oneDNN (what `llmlab serve` does
  on the CPU) and as loaded.
- transformers: the requests in arrival order, in static batches of the batch size, left-padded; a batch runs to its
  longest output length (sdpa attention, greedy). Only each request's requested tokens count as output.

Reported: output tokens/s and requests/s over the whole run, time to first token and time per output token per
request (p50, p99), and whether every request's tokens agree between the two (greedy).

    python benchmarks/bench_serve.py                    # 64 requests, batch 16
    python benchmarks/bench_serve.py --quick            # 16 requests of 16–64 tokens, batch 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from llmlab.infer.config import GenerationConfig
from llmlab.infer.engine import Engine
from llmlab.infer.prepack import prepack
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf


def workload(count: int, low: int, high: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """count (prompt ids, output length) pairs, both lengths uniform in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (count, 2), generator=generator).tolist()
    return [(torch.randint(3, vocab, (n,), generator=generator).tolist(), m) for n, m in lengths]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_engine(model, requests, batch: int) -> tuple[float, list[list[int]], list[float], list[float]]:
    """(wall seconds, tokens per request, time to first token and time per output token per request)."""
    engine = Engine(model, max_num_seqs=batch)
    started = time.perf_counter()
    ids = [engine.add_request(prompt, GenerationConfig(max_new_tokens=new, ignore_eos=True)) for prompt, new in requests]
    finished = {}
    with torch.no_grad():
        while engine.has_unfinished():
            finished.update({output.request_id: output for output in engine.step() if output.finished})
    elapsed = time.perf_counter() - started
    outputs = [finished[request_id] for request_id in ids]
    first = [output.first_token_time - output.arrival_time for output in outputs]
    per_token = [(output.finish_time - output.first_token_time) / max(len(output.outputs[0].token_ids) - 1, 1)
                 for output in outputs]
    return elapsed, [output.outputs[0].token_ids for output in outputs], first, per_token


class StepClock:
    """transformers' streamer protocol: put() gets the prompt, then each step's tokens; the times of the steps."""

    def __init__(self):
        self.times: list[float] = []
        self._calls = 0

    def put(self, value) -> None:
        self._calls += 1
        if self._calls > 1:
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_transformers(model, requests, batch: int) -> tuple[float, list[list[int]], list[float], list[float]]:
    """The same as run_engine, with static batches of generate."""
    tokens, first, per_token = [], [], []
    started = time.perf_counter()
    for start in range(0, len(requests), batch):
        group = requests[start:start + batch]
        longest = max(len(prompt) for prompt, _ in group)
        ids = torch.tensor([[0] * (longest - len(prompt)) + prompt for prompt, _ in group])
        mask = (ids != 0).long()
        for row, (prompt, _) in enumerate(group):
            mask[row, longest - len(prompt):] = 1
        clock = StepClock()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(n for _, n in group),
                                 do_sample=False, num_beams=1, pad_token_id=0, streamer=clock)
        for row, (_, new) in enumerate(group):
            tokens.append(out[row, longest:longest + new].tolist())
            first.append(clock.times[0] - started)
            per_token.append((clock.times[new - 1] - clock.times[0]) / max(new - 1, 1))
    return time.perf_counter() - started, tokens, first, per_token


def main() -> None:
    """Run both on the workload and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lengths", default=None, help="low,high of prompt and output lengths (default 16,256)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="16 requests of 16–64 tokens, batch 8")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    count = arguments.requests or (16 if arguments.quick else 64)
    batch = arguments.batch or (8 if arguments.quick else 16)
    low, high = map(int, (arguments.lengths or ("16,64" if arguments.quick else "16,256")).split(","))
    torch.manual_seed(0)
    reference = Model(presets.gpt2("124m")).eval()
    requests = workload(count, low, high, reference.config.vocab_size)
    with tempfile.TemporaryDirectory() as temporary:
        save_hf(reference, Path(temporary))
        del reference
        import llmlab
        from transformers import AutoModelForCausalLM

        ours = llmlab.load(temporary).eval()
        theirs = AutoModelForCausalLM.from_pretrained(temporary, attn_implementation="sdpa").eval()
        theirs.generation_config.eos_token_id = None
    run_engine(ours, requests[:2], batch)  # warm-up
    results = {"llmlab engine, weights as loaded": run_engine(ours, requests, batch)}
    prepack(ours)
    run_engine(ours, requests[:2], batch)
    results["llmlab engine, prepacked (llmlab serve)"] = run_engine(ours, requests, batch)
    results["transformers static batches"] = run_transformers(theirs, requests, batch)
    output_tokens = sum(new for _, new in requests)
    print(f"{count} requests, prompt and output lengths uniform in {low}–{high}, {output_tokens} output tokens, "
          f"batch {batch}, {arguments.threads} threads, GPT-2 124M (random weights)")
    print("| | output tokens/s | requests/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, (seconds, _, first, per_token) in results.items():
        print(f"| {name} | {output_tokens / seconds:.1f} | {count / seconds:.2f} | {percentile(first, 50):.1f} / "
              f"{percentile(first, 99):.1f} | {1000 * percentile(per_token, 50):.0f} / "
              f"{1000 * percentile(per_token, 99):.0f} |")
    hf_seconds, their_tokens = results["transformers static batches"][:2]
    for name, (seconds, tokens, _, _) in list(results.items())[:-1]:
        same = sum(a == b for a, b in zip(tokens, their_tokens))
        print(f"{name}: {hf_seconds / seconds:.2f}x transformers; {same}/{count} requests give the same tokens")


if __name__ == "__main__":
    main()
