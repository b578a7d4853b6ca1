"""Greedy generation: llmlab's generate_ids against transformers' generate on the same weights and prompts.

Both load one random-weight checkpoint (llmlab writes it with save_hf, transformers reads it with from_pretrained),
run with the same threads in one process, in alternating rounds: batch 1 (a 32-token prompt) and batch 8 (prompts of
16 to 256 tokens, left-padded), 128 new tokens each, EOS ignored. Reported per implementation: tokens/s (all new
tokens over the whole call), time to first token (a call with max_new_tokens=1), the median of the per-round ratios to
transformers, peak memory, and for batch 1 the fraction of the memory-bandwidth bound (every weight read once per
token, over a bandwidth measured here by summing a 1 GiB tensor).

Peak memory: on CPU each configuration runs once more in a child process of its own, which loads the model, warms up,
resets the kernel's peak-RSS counter (/proc/self/clear_refs) and reports VmHWM minus the RSS before the call, i.e.
what generation adds above the loaded weights; on a GPU, torch.cuda.max_memory_allocated minus the allocation before.

    python benchmarks/bench_generate.py                 # GPT-2 124M and LLaMA 370M, the full measurement
    python benchmarks/bench_generate.py --quick         # GPT-2 124M, 16 new tokens, one round
    python benchmarks/bench_generate.py --device cuda --impls static,compiled,hf
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmlab.infer.generate import generate_ids
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

MODELS = {
    "gpt2-124m": lambda: presets.gpt2("124m"),
    # 24 layers × width 1024, SwiGLU 2816, untied head: 374M parameters
    "llama-370m": lambda: presets.llama("7b", n_layers=24, d_model=1024, n_heads=16, d_ff=2816),
}
IMPLS = {  # name → llmlab's options (None: transformers)
    "dynamic": dict(cache="dynamic"), "static": dict(cache="static"),
    "compiled": dict(cache="static", compile=True), "hf": None,
}


def prompts(batch: int, generator: torch.Generator, vocab: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded ids and mask: one 32-token prompt, or `batch` prompts of lengths spread over 16..256."""
    lengths = [32] if batch == 1 else torch.linspace(16, 256, batch).round().long().tolist()
    longest = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), longest), generator=generator)
    mask = (torch.arange(longest) >= torch.tensor([[longest - n] for n in lengths])).long()
    return ids.masked_fill(mask == 0, 0), (None if batch == 1 else mask)


def load_pair(directory: Path, device: str, impls: list[str]):
    """(llmlab model, transformers model) from the checkpoint directory, each only if some impl needs it."""
    import llmlab
    from transformers import AutoModelForCausalLM

    ours = llmlab.load(directory, device=device).eval() if any(IMPLS[i] is not None for i in impls) else None
    theirs = None
    if "hf" in impls:
        theirs = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa").to(device).eval()
        theirs.generation_config.eos_token_id = None  # the same 128 tokens on both sides
    return ours, theirs


def call(impl: str, ours, theirs, ids, mask, new_tokens: int) -> torch.Tensor:
    """One greedy generation: prompt + new tokens [batch, T + new_tokens]."""
    with torch.no_grad():
        if IMPLS[impl] is None:
            return theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                   num_beams=1, pad_token_id=0)
        return generate_ids(ours, ids, mask, max_new_tokens=new_tokens, ignore_eos=True, **IMPLS[impl])


def timed(device: str, function) -> tuple[float, object]:
    """Wall seconds of function() (device synchronised) and its result."""
    if device != "cpu":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = function()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def read_bandwidth(device: str) -> float:
    """Bytes/s of reading a 1 GiB float32 tensor (torch.sum), the best of five."""
    x = torch.ones(2 ** 28, device=device)
    x.sum()
    best = min(timed(device, x.sum)[0] for _ in range(5))
    return x.numel() * x.element_size() / best


def memory_child(directory: str, impl: str, batch: int, new_tokens: int, device: str, threads: int) -> None:
    """Print, as JSON, the memory generation adds above the loaded model (run in a process of its own)."""
    torch.set_num_threads(threads)
    ours, theirs = load_pair(Path(directory), device, [impl])
    model = theirs if ours is None else ours
    ids, mask = prompts(batch, torch.Generator().manual_seed(0), model.config.vocab_size)
    ids, mask = ids.to(device), None if mask is None else mask.to(device)
    call(impl, ours, theirs, ids, mask, 2)  # warm-up (and compilation) outside the measurement
    if device == "cpu":
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
        call(impl, ours, theirs, ids, mask, new_tokens)
        added = (_status_kib("VmHWM") - before) * 1024
    else:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call(impl, ours, theirs, ids, mask, new_tokens)
        added = torch.cuda.max_memory_allocated() - before
    print(json.dumps({"added_bytes": added}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(directory: Path, impl: str, batch: int, new_tokens: int, device: str, threads: int) -> float:
    """MiB generation adds above the loaded model, from a child process."""
    output = subprocess.run([sys.executable, __file__, "--memory-child", str(directory), impl, str(batch),
                             str(new_tokens), "--device", device, "--threads", str(threads)],
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["added_bytes"] / 2 ** 20


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
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=4, metavar=("DIR", "IMPL", "BATCH", "NEW"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    device, threads = arguments.device, arguments.threads
    if arguments.memory_child:
        directory, impl, batch, new_tokens = arguments.memory_child
        return memory_child(directory, impl, int(batch), int(new_tokens), device, threads)
    torch.set_num_threads(threads)  # both sides run in this process, with these threads
    models = (arguments.models or ("gpt2-124m" if arguments.quick else ",".join(MODELS))).split(",")
    impls = arguments.impls.split(",")
    new_tokens = arguments.new_tokens or (16 if arguments.quick else 128)
    rounds = arguments.rounds or (1 if arguments.quick else 2)
    batches = [int(b) for b in arguments.batches.split(",")]
    bandwidth = read_bandwidth(device)
    print(f"device {device}, {threads} threads, read bandwidth {bandwidth / 1e9:.1f} GB/s, {new_tokens} new tokens, "
          f"{rounds} rounds")
    rows = []
    for name in models:
        torch.manual_seed(0)
        reference = Model(MODELS[name]()).eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())  # tied ones once
        with tempfile.TemporaryDirectory() as temporary:
            directory = Path(temporary) / name
            save_hf(reference, directory)
            del reference
            ours, theirs = load_pair(directory, device, impls)
            vocab = (ours or theirs).config.vocab_size
            for batch in batches:
                ids, mask = prompts(batch, torch.Generator().manual_seed(batch), vocab)
                ids, mask = ids.to(device), None if mask is None else mask.to(device)
                outputs = {impl: call(impl, ours, theirs, ids, mask, 4) for impl in impls}  # warm-up, compilation
                same = {impl: torch.equal(out, outputs.get("hf", out)) for impl, out in outputs.items()}
                seconds = {impl: [] for impl in impls}
                first = {impl: [] for impl in impls}
                for round_ in range(rounds):
                    order = impls if round_ % 2 == 0 else impls[::-1]  # alternate who goes first
                    for impl in order:
                        first[impl].append(timed(device, lambda: call(impl, ours, theirs, ids, mask, 1))[0])
                        elapsed, out = timed(device, lambda: call(impl, ours, theirs, ids, mask, new_tokens))
                        seconds[impl].append(elapsed)
                        if impl != "hf" and "hf" in outputs:
                            same[impl] = same[impl] and out.shape[1] == ids.shape[1] + new_tokens
                for impl in impls:
                    row = {"model": name, "batch": batch, "impl": impl,
                           "tok_s": batch * new_tokens / statistics.median(seconds[impl]),
                           "ttft_ms": 1000 * statistics.median(first[impl]), "same": same[impl]}
                    if "hf" in impls:
                        row["ratio"] = statistics.median(h / s for h, s in zip(seconds["hf"], seconds[impl]))
                        row["ratios"] = [h / s for h, s in zip(seconds["hf"], seconds[impl])]
                    if batch == 1:  # decode steps only: the prefill's time taken out
                        decode = statistics.median(t - f for t, f in zip(seconds[impl], first[impl]))
                        row["bw_frac"] = (new_tokens - 1) / decode * weight_bytes / bandwidth
                    if not arguments.no_memory:
                        row["mem_mib"] = peak_memory(directory, impl, batch, new_tokens, device, threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            del ours, theirs
    print()
    print("| model | batch | impl | tokens/s | × transformers (per round) | TTFT ms | peak +MiB | of BW bound | "
          "same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f} ({', '.join(f'{x:.2f}' for x in r['ratios'])})" if "ratio" in r else "–"
        print(f"| {r['model']} | {r['batch']} | {r['impl']} | {r['tok_s']:.1f} | {ratio} | {r['ttft_ms']:.0f} | "
              f"{r.get('mem_mib', float('nan')):.0f} | "
              f"{'–' if 'bw_frac' not in r else format(r['bw_frac'], '.0%')} | {r['same']} |")


if __name__ == "__main__":
    main()
