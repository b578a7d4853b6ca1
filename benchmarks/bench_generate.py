"""Greedy generation: llmlab's generate_ids against transformers' generate on the same weights and prompts.

Both load one random-weight checkpoint (llmlab writes it with save_hf, transformers reads it with from_pretrained),
run with the same threads in one process, in alternating rounds: batch 1 (a 32-token prompt) and batch 8 (prompts of
16 to 256 tokens, left-padded), 128 new tokens each, EOS ignored. Reported per implementation: tokens/s (all new
tokens over the whole call), time to first token (a call with max_new_tokens=1), the median of the per-round ratios to
transformers, peak memory, and for batch 1 the fraction of the memory-bandwidth bound (every weight a step reads, once
per token, over the machine's read bandwidth). The bandwidth is torch.sum's over a 1 GiB tensor, read again and
again for a second right before and right after each call, the higher of the two taken, since a shared host's
bandwidth varies from minute to minute: sustained, all the bytes over all the time, as a decode step's rate is; the
fastest single read of those (the peak, which a shared host rarely sustains for the seconds a call takes) gives the
second, stricter fraction. The fraction reported is the median over the steady rounds, those whose two readings agree
within 10% (a call during which the host changed pace is held to a bound it did not have throughout); every round's
is printed, an unsteady one's marked *.

Peak memory is what a call adds above the loaded models, the median over rounds: on CPU the kernel's peak-RSS counter
is reset before each call (/proc/self/clear_refs) and VmHWM after it less VmRSS before it is reported, the script
running under a fixed glibc mmap threshold so that freed blocks go back to the system between calls; on a GPU,
torch.cuda.max_memory_allocated less the allocation before.

    python benchmarks/bench_generate.py                 # GPT-2 124M and LLaMA 370M, the full measurement
    python benchmarks/bench_generate.py --quick         # GPT-2 124M, 16 new tokens, one round
    python benchmarks/bench_generate.py --impls static,packed,hf   # with llmlab's weights prepacked (CPU)
    python benchmarks/bench_generate.py --impls packed,packed-ragged,hf   # the ragged cache: no padding stored
    python benchmarks/bench_generate.py --impls packed-ragged,onednn-ragged,hf --batches 1   # native kernel vs oneDNN
    python benchmarks/bench_generate.py --device cuda --impls static,compiled,hf
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import DecodeState, decode
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

MODELS = {
    "gpt2-124m": lambda: presets.gpt2("124m"),
    # 24 layers × width 1024, SwiGLU 2816, untied head: 374M parameters
    "llama-370m": lambda: presets.llama("7b", n_layers=24, d_model=1024, n_heads=16, d_ff=2816),
}
IMPLS = {  # name → llmlab's options (None: transformers)
    "dynamic": dict(cache="dynamic"), "static": dict(cache="static"), "ragged": dict(cache="ragged"),
    "compiled": dict(cache="static", compile=True), "hf": None,
    # on another copy of the model, its linear weights prepacked (llmlab.infer.prepack): for the native kernel where
    # it builds (what llmlab generate does on the CPU), or for oneDNN
    "packed": dict(cache="static"), "packed-ragged": dict(cache="ragged"), "onednn-ragged": dict(cache="ragged"),
}
PREPACKED = {"packed": "auto", "packed-ragged": "auto", "onednn-ragged": "onednn"}  # impl → prepack's kernel


def prompts(batch: int, generator: torch.Generator, vocab: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded ids and mask: one 32-token prompt, or `batch` prompts of lengths spread over 16..256."""
    lengths = [32] if batch == 1 else torch.linspace(16, 256, batch).round().long().tolist()
    longest = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), longest), generator=generator)
    mask = (torch.arange(longest) >= torch.tensor([[longest - n] for n in lengths])).long()
    return ids.masked_fill(mask == 0, 0), (None if batch == 1 else mask)


def load_models(directory: Path, device: str, impls: list[str]) -> dict:
    """impl → the model it runs, from the checkpoint directory: llmlab's as loaded, llmlab's prepacked (a copy per
    kernel), transformers'; each loaded only if some impl needs it."""
    import llmlab
    from llmlab.infer.prepack import prepack
    from transformers import AutoModelForCausalLM

    models, ours, packed = {}, None, {}
    for impl in impls:
        if IMPLS[impl] is None:
            models[impl] = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").to(device).eval()
            models[impl].generation_config.eos_token_id = None  # the same 128 tokens on both sides
        elif impl in PREPACKED:
            kernel = PREPACKED[impl]
            if kernel not in packed:
                packed[kernel] = llmlab.load(directory, device=device).eval()
                prepack(packed[kernel], kernel=kernel)
            models[impl] = packed[kernel]
        else:
            ours = ours or llmlab.load(directory, device=device).eval()
            models[impl] = ours
    return models


class FirstToken:
    """Notes when the first new token exists: transformers' streamer protocol (put: the prompt, then each step's
    tokens) and llmlab's on_step callback."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass

    def __call__(self, tokens) -> list:
        if self.at is None:
            self.at = time.perf_counter()
        return []


def call(impl: str, model, ids, mask, new_tokens: int, first: FirstToken | None = None) -> torch.Tensor:
    """One greedy generation: prompt + new tokens [batch, T + new_tokens]."""
    with torch.no_grad():
        if IMPLS[impl] is None:
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                   num_beams=1, pad_token_id=0, streamer=first)
        # generate_ids's own steps, with decode's on_step to time the first token
        config = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
        state = DecodeState(model, ids, mask, new_tokens, **IMPLS[impl])
        prompt = state.sequence
        new, _ = decode(state, config, new_tokens, pad=0, on_step=first)
        return torch.cat([prompt, new], dim=1)


def measured(device: str, function) -> tuple[float, float, object]:
    """(wall seconds of function(), MiB of memory it added at its peak, its result).

    CPU: the kernel's peak-RSS counter is reset first (/proc/self/clear_refs), and the peak is VmHWM after minus VmRSS
    before; the script runs under a fixed glibc mmap threshold, so that large freed blocks go back to the system and
    every call starts from the loaded model. GPU: torch.cuda.max_memory_allocated after minus allocated before."""
    if device == "cpu":
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS") * 1024
    else:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    result = function()
    if device != "cpu":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = _status_kib("VmHWM") * 1024 if device == "cpu" else torch.cuda.max_memory_allocated()
    return elapsed, (peak - before) / 2 ** 20, result


def read_bandwidth(device: str, seconds: float = 1.0) -> tuple[float, float]:
    """(sustained, peak) bytes/s of reading a 1 GiB float32 tensor (torch.sum) over and over for about seconds: all
    the bytes over all the time, and the fastest single read. On the CPU the tensor lies on huge pages where the
    system gives them, as prepacked weights do (llmlab.infer.prepack.huge_page_empty): the fastest memory to read."""
    from llmlab.infer.prepack import huge_page_empty
    x = huge_page_empty((2 ** 28,), torch.float32) if device == "cpu" else torch.empty(2 ** 28, device=device)
    x.fill_(1.0)
    x.sum()
    times = []
    while sum(times) < seconds or len(times) < 2:
        times.append(measured(device, x.sum)[0])
    size = x.numel() * x.element_size()
    return size * len(times) / sum(times), size / min(times)


def bytes_read_per_token(model) -> int:
    """Bytes of the weights one decode step reads: every parameter once (tied ones once), less the embedding tables
    it only indexes a row of (positions, and the token embedding unless the head shares it)."""
    indexed = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "head", None)
    if head is not None:
        indexed.discard(id(head.weight))
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in indexed)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    """Measure every model × batch × implementation and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="GPT-2 only, 16 new tokens, one round")
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--impls", default="static,compiled,hf", help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bandwidth-check", type=int, default=0, metavar="N",
                        help="only compare torch.sum's sustained bandwidth over 2 s with the peak around it, N times")
    arguments = parser.parse_args()
    device, threads = arguments.device, arguments.threads
    if device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see measured(): run again under it
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    torch.set_num_threads(threads)  # both sides run in this process, with these threads
    if arguments.bandwidth_check:
        return check_bandwidth(device, arguments.bandwidth_check)
    models = (arguments.models or ("gpt2-124m" if arguments.quick else ",".join(MODELS))).split(",")
    impls = arguments.impls.split(",")
    new_tokens = arguments.new_tokens or (16 if arguments.quick else 128)
    rounds = arguments.rounds or (1 if arguments.quick else 2)
    batches = [int(b) for b in arguments.batches.split(",")]
    bandwidth = read_bandwidth(device)
    print(f"device {device}, {threads} threads, read bandwidth {bandwidth[0] / 1e9:.1f} GB/s sustained, "
          f"{bandwidth[1] / 1e9:.1f} at the peak (at the start; batch 1 measures it again around each call), "
          f"{new_tokens} new tokens, {rounds} rounds")
    rows = []
    for name in models:
        torch.manual_seed(0)
        reference = Model(MODELS[name]()).eval()
        weight_bytes = bytes_read_per_token(reference)
        with tempfile.TemporaryDirectory() as temporary:
            directory = Path(temporary) / name
            save_hf(reference, directory)
            del reference
            models = load_models(directory, device, impls)
            vocab = models[impls[0]].config.vocab_size
            for batch in batches:
                ids, mask = prompts(batch, torch.Generator().manual_seed(batch), vocab)
                ids, mask = ids.to(device), None if mask is None else mask.to(device)
                for impl in impls:
                    call(impl, models[impl], ids, mask, 2)  # warm-up (and compilation: the same cache capacity)
                outputs = {}
                seconds, first, memory = ({impl: [] for impl in impls} for _ in range(3))
                bounds = {impl: [] for impl in impls}  # batch 1: the (sustained, peak) bandwidth around each call
                for round_ in range(rounds):
                    order = impls if round_ % 2 == 0 else impls[::-1]  # alternate who goes first
                    before = read_bandwidth(device) if batch == 1 else bandwidth
                    for impl in order:
                        marker = FirstToken()
                        started = time.perf_counter()
                        elapsed, added, out = measured(
                            device, lambda: call(impl, models[impl], ids, mask, new_tokens, marker))
                        seconds[impl].append(elapsed)
                        first[impl].append(marker.at - started)
                        memory[impl].append(added)
                        outputs.setdefault(impl, out)
                        after = read_bandwidth(device) if batch == 1 else bandwidth
                        bounds[impl].append((before, after))
                        before = after
                same = {impl: torch.equal(out, outputs.get("hf", out)) for impl, out in outputs.items()}
                for impl in impls:
                    row = {"model": name, "batch": batch, "impl": impl,
                           "tok_s": batch * new_tokens / statistics.median(seconds[impl]),
                           "ttft_ms": 1000 * statistics.median(first[impl]), "same": same[impl]}
                    if "hf" in impls:
                        row["ratio"] = statistics.median(h / s for h, s in zip(seconds["hf"], seconds[impl]))
                        row["ratios"] = [h / s for h, s in zip(seconds["hf"], seconds[impl])]
                    if batch == 1:  # decode steps only (the prefill's time taken out), per round
                        row.update(bandwidth_fractions(seconds[impl], first[impl], bounds[impl], new_tokens,
                                                       weight_bytes))
                    row["mem_mib"] = statistics.median(memory[impl])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del models
    print()
    print("| model | batch | impl | tokens/s | × transformers (per round) | TTFT ms | peak +MiB | of BW bound | "
          "of peak BW bound | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratios'])})" if "ratio" in r else "–"
        print(f"| {r['model']} | {r['batch']} | {r['impl']} | {r['tok_s']:.1f} | {ratio} | {r['ttft_ms']:.0f} | "
              f"{r.get('mem_mib', float('nan')):.0f} | "
              f"{'–' if 'bw_frac' not in r else bw_cell(r)} | "
              f"{'–' if 'peak_bw_frac' not in r else format(r['peak_bw_frac'], '.0%')} | {r['same']} |")


def check_bandwidth(device: str, rounds: int) -> None:
    """How much of the peak read bandwidth torch.sum itself sustains: per round, its sustained rate over two seconds
    over the higher peak read in the second before and after (as a batch-1 call's bound is read around it)."""
    ratios = []
    for _ in range(rounds):
        before, sustained, after = read_bandwidth(device), read_bandwidth(device, 2.0), read_bandwidth(device)
        ratios.append(sustained[0] / max(before[1], after[1]))
        print(f"peak {before[1] / 1e9:.1f} → {after[1] / 1e9:.1f} GB/s, sustained over 2 s {sustained[0] / 1e9:.1f}: "
              f"{ratios[-1]:.2f} of the peak", flush=True)
    print(f"torch.sum sustains {statistics.median(ratios):.2f} of the peak around it (median of {rounds}; "
          f"{min(ratios):.2f}–{max(ratios):.2f})")


STEADY = 0.9  # a round's bandwidth is steady when the lower of its two readings is within 10% of the higher


def bandwidth_fractions(seconds: list, first: list, readings: list, new_tokens: int, weight_bytes: int) -> dict:
    """Per round, the decode rate (bytes of weights a step reads × steps after the first, over the call's time less
    its TTFT) over the higher of the (sustained, peak) bandwidths read right before and after the call; the median
    over the steady rounds (both readings within 10%: the host did not change pace during the call), or over all
    rounds where none was steady, and which rounds were steady."""
    rates = [(new_tokens - 1) / (t - f) * weight_bytes for t, f in zip(seconds, first)]
    sustained = [max(before[0], after[0]) for before, after in readings]
    steady = [min(before[0], after[0]) >= STEADY * max(before[0], after[0]) for before, after in readings]
    fractions = [rate / bound for rate, bound in zip(rates, sustained)]
    peak = [rate / max(before[1], after[1]) for rate, (before, after) in zip(rates, readings)]
    kept = [i for i, ok in enumerate(steady) if ok] or list(range(len(rates)))
    return {"bw_fracs": fractions, "steady": steady, "bw_frac": statistics.median(fractions[i] for i in kept),
            "peak_bw_frac": statistics.median(peak[i] for i in kept),
            "bandwidths_gb_s": [[round(b[0] / 1e9, 1), round(a[0] / 1e9, 1)] for b, a in readings],
            "peak_bandwidths_gb_s": [[round(b[1] / 1e9, 1), round(a[1] / 1e9, 1)] for b, a in readings]}


def bw_cell(row: dict) -> str:
    """The median fraction of the bandwidth bound over the steady rounds, each round's in brackets (an unsteady
    one's marked with *)."""
    rounds = ", ".join(f"{f:.0%}" + ("" if ok else "*") for f, ok in zip(row["bw_fracs"], row["steady"]))
    return f"{row['bw_frac']:.0%} ({rounds})"


if __name__ == "__main__":
    main()
