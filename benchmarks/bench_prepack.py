"""Prepacked linear weights (llmlab.infer.prepack) against F.linear on the CPU: GPT-2 124M's 48 body matrices and its
head at 1–256 rows, and a 16-row decode step of the serving engine, as loaded and prepacked.

Linears: every matrix of the model in a row on random inputs of the given rows, the best of several calls, through
F.linear, through MKL's packed GEMM, through oneDNN's blocked copy and through llmlab's native kernel (what PackedLinear
calls for float32, oneDNN where the kernel cannot be built); at one row, each kernel's read rate of the weights against
torch.sum's bandwidth read right before and after it, over alternating rounds; then greedy generation (batch 1 and
8) on a copy prepacked for each kernel, alternating. Engine: 16 requests of 16–256 prompt tokens prefilled,
then the median of 10 one-token steps of all 16 rows (random-weight GPT-2 124M). Also the resident memory the
prepacked copies add, and a one-row decode step's time outside the linears (the same 12 layers at width 64).

    python benchmarks/bench_prepack.py
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmlab.infer.config import GenerationConfig
from llmlab.infer.engine import Engine
from llmlab.infer.prepack import blocked, prepack, unpack
from llmlab.model import Model, presets


def best_ms(function, calls: int) -> float:
    """The fastest of calls runs of function (after one warm-up), in milliseconds."""
    function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def read_bandwidth() -> float:
    """Bytes/s of reading a 1 GiB float32 tensor (torch.sum), the best of five, on huge pages as the native kernel's
    weights are (as bench_generate measures it)."""
    from llmlab.infer.prepack import huge_page_empty
    x = huge_page_empty((2 ** 28,), torch.float32).fill_(1.0)
    return x.numel() * x.element_size() / (best_ms(x.sum, 5) / 1000)


def native_kernel() -> bool:
    """Whether llmlab's native kernel is built and loaded here (else the table leaves its column empty)."""
    from llmlab.infer import native

    return native.load("blocked_linear")


def onednn_linears(linears, packed, inputs):
    """A call of every layer through oneDNN's blocked copy (what PackedLinear runs without the native kernel)."""
    return lambda: [torch.ops.mkldnn._linear_pointwise(inputs[m.in_features], p, m.bias, "none", [], "")
                    for m, p in zip(linears, packed)]


def native_linears(linears, blocks, inputs):
    """A call of every layer through llmlab's native kernel over its blocked copy (what PackedLinear runs)."""
    return lambda: [torch.ops.llmlab.blocked_linear(inputs[m.in_features], b, m.bias, m.out_features)
                    for m, b in zip(linears, blocks)]


def read_rates(kernels: dict, weight_bytes: int, rounds: int) -> dict[str, list[float]]:
    """Per kernel, per round: its read rate of the weights (best of 5 calls) over torch.sum's bandwidth read right
    before and right after it (the higher), the kernels alternating, since a shared host's bandwidth varies."""
    fractions = {name: [] for name in kernels}
    for round_ in range(rounds):
        before = read_bandwidth()
        for name in (list(kernels) if round_ % 2 == 0 else list(kernels)[::-1]):
            rate = weight_bytes / (best_ms(kernels[name], 5) / 1000)
            after = read_bandwidth()
            fractions[name].append(rate / max(before, after))
            before = after
    return fractions


def generate_speedup(model, rows: int, rounds: int, new_tokens: int = 48) -> list[float]:
    """Per round, the time of a greedy generate_ids call (rows 32-token prompts) on a copy prepacked for oneDNN over
    the same call on one prepacked for the native kernel, the two alternating who goes first."""
    import copy

    from llmlab.infer.generate import generate_ids

    native_copy, onednn_copy = copy.deepcopy(model), copy.deepcopy(model)
    prepack(native_copy, kernel="native")
    prepack(onednn_copy, kernel="onednn")
    ids = torch.randint(3, model.config.vocab_size, (rows, 32), generator=torch.Generator().manual_seed(rows))
    copies = {"native": native_copy, "onednn": onednn_copy}
    ratios = []
    with torch.no_grad():
        for candidate in copies.values():
            generate_ids(candidate, ids, max_new_tokens=4, do_sample=False)
        for round_ in range(rounds):
            seconds = {}
            for name in (list(copies) if round_ % 2 == 0 else list(copies)[::-1]):
                started = time.perf_counter()
                generate_ids(copies[name], ids, max_new_tokens=new_tokens, do_sample=False)
                seconds[name] = time.perf_counter() - started
            ratios.append(seconds["onednn"] / seconds["native"])
    return ratios


def resident_mib() -> float:
    """This process's resident memory (VmRSS), MiB."""
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def decode_step_ms(model, requests: int = 16, steps: int = 10) -> float:
    """The median time of a one-token engine step over requests rows, after their prompts are prefilled."""
    generator = torch.Generator().manual_seed(0)
    engine = Engine(model, max_num_seqs=requests)
    for _ in range(requests):
        length = int(torch.randint(16, 257, (1,), generator=generator))
        engine.add_request(torch.randint(3, model.config.vocab_size, (length,), generator=generator).tolist(),
                           GenerationConfig(max_new_tokens=steps + 8, ignore_eos=True))
    with torch.no_grad():
        while engine.waiting or any(sequence.pending > 1 for sequence in engine.running):
            engine.step()
        engine.step()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def outside_linears_ms(steps: int = 64) -> float:
    """The time of a one-token decode step of GPT-2 124M's 12 layers shrunk to width 64 (prepacked, ragged cache,
    greedy): the per-step work outside the matrix multiplies, which take next to nothing at that width."""
    from llmlab.infer.generate import DecodeState, decode

    torch.manual_seed(0)
    tiny = Model(presets.gpt2("124m", d_model=64, n_heads=1, d_ff=256, vocab_size=512)).eval()
    prepack(tiny)
    prompt = torch.randint(3, 500, (1, 32))

    def per_step() -> float:
        marks = []
        with torch.no_grad():
            state = DecodeState(tiny, prompt, None, steps)
            decode(state, GenerationConfig(max_new_tokens=steps, ignore_eos=True), steps, pad=0,
                   on_step=lambda *_: marks.append(time.perf_counter()) or [])
        return (marks[-1] - marks[0]) / (len(marks) - 1)

    per_step()
    return 1000 * min(per_step() for _ in range(3))


def main() -> None:
    """Print the linears table, the engine's step times and the memory of the packed copies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", default="1,4,16,256")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds of the one-row read rates")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)
    model = Model(presets.gpt2("124m")).eval()
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    weight_mib = sum(module.weight.numel() * module.weight.element_size() for module in linears) / 2 ** 20
    print(f"GPT-2 124M, {len(linears)} linear layers ({weight_mib:.0f} MiB of weights), {arguments.threads} threads")
    before = resident_mib()
    packed = [torch.ops.mkldnn._reorder_linear_weight(module.weight.detach()) for module in linears]
    print(f"the oneDNN copies add {resident_mib() - before:.0f} MiB of resident memory")
    native = native_kernel()
    ours = [blocked(module.weight) for module in linears] if native else None
    print(f"| rows | F.linear (ms) | MKL packed (ms) | oneDNN blocked (ms) | llmlab native (ms) | "
          f"speed-up, {'native' if native else 'oneDNN'} over F.linear |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in map(int, arguments.rows.split(",")):
        inputs = {width: torch.randn(rows, width) for width in {m.in_features for m in linears}}
        calls = 3 if rows > 64 else 7
        with torch.no_grad():
            # MKL's own packed GEMM (what inductor's CPU freezing may use for float32), packed for this row count
            mkl = [torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), rows) for m in linears]
            plain = best_ms(lambda: [F.linear(inputs[m.in_features], m.weight, m.bias) for m in linears], calls)
            mkl_ms = best_ms(lambda: [torch.ops.mkl._mkl_linear(inputs[m.in_features], w, m.weight, m.bias, rows)
                                      for m, w in zip(linears, mkl)], calls)
            del mkl
            onednn = best_ms(onednn_linears(linears, packed, inputs), calls)
            ours_ms = best_ms(native_linears(linears, ours, inputs), calls) if native else float("nan")
        best = ours_ms if native else onednn
        print(f"| {rows} | {plain:.1f} | {mkl_ms:.1f} | {onednn:.1f} | {ours_ms:.1f} | {plain / best:.2f}× |")
    with torch.no_grad():
        one_row = {width: torch.randn(1, width) for width in {m.in_features for m in linears}}
        kernels = {"oneDNN": onednn_linears(linears, packed, one_row)}
        if native:
            kernels["llmlab native"] = native_linears(linears, ours, one_row)
        rates = read_rates(kernels, weight_mib * 2 ** 20, arguments.rounds)
    for name, fractions in rates.items():
        print(f"one row, {name}: {statistics.median(fractions):.0%} of torch.sum's bandwidth (median of "
              f"{len(fractions)} rounds, each against the bandwidth read right before and after it; "
              f"{min(fractions):.0%}–{max(fractions):.0%})")
    del packed, ours
    if native:
        for rows in (1, 8):
            ratios = generate_speedup(model, rows, arguments.rounds)
            print(f"generate_ids, {rows} × 32-token prompt{'s' if rows > 1 else ''}, 48 new tokens: the native kernel "
                  f"{statistics.median(ratios):.2f}× oneDNN's speed (median of {len(ratios)} alternating rounds; "
                  f"{min(ratios):.2f}–{max(ratios):.2f})")
    print(f"a one-row decode step outside the linears (GPT-2's 12 layers at width 64, prepacked, through generate's "
          f"steps): {outside_linears_ms():.2f} ms")
    as_loaded = decode_step_ms(model)
    prepack(model)
    prepacked = decode_step_ms(model)
    unpack(model)
    print(f"engine, 16-row decode step (median of 10): as loaded {as_loaded:.0f} ms, prepacked {prepacked:.0f} ms "
          f"({as_loaded / prepacked:.2f}×)")


if __name__ == "__main__":
    main()
