"""Whole optimizer steps through llmlab's Trainer: llmlab's Model against transformers' model at the same config.

Both models come from one Hugging Face config (llmlab's through its HF adapter, so shapes and FLOPs are identical)
and are trained by the same `llmlab.train.loop.Trainer` with the same TrainConfig (AdamW, fused where the device has
it; gradient clipping; cosine schedule; bf16 autocast on GPU, fp32 on CPU; optional torch.compile): transformers'
causal-LM models take the same {"input_ids", "labels"} batches and return `.loss`, so no adapter is needed. Timing
windows alternate between the two in one process so machine noise hits both; each window is whole steps
(forward, backward, clipping, optimizer, schedule) bracketed by device synchronisation.

Peak memory is measured while each model's warm-up steps run, above what was allocated just before that model was
built (so it covers weights, gradients, optimizer state and activations): `torch.cuda.max_memory_allocated` on GPU;
on CPU the resident set size sampled every 2 ms from /proc/self/statm, with glibc told (mallopt) to return every
block of 64 KiB or more to the system on free while memory is measured, so that one model's freed memory is not
silently reused by the other (the timed windows run with glibc's usual 32 MiB / 64 MiB thresholds).

    python benchmarks/bench_train.py --models gpt2 --batch 1 --seq 512 --steps 3                  # CPU
    python benchmarks/bench_train.py --device cuda --dtype bf16 --compile                        # H100 goals
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import gpt2_124m, llama_400m  # noqa: E402

from llmlab.model.hf import family_for  # noqa: E402
from llmlab.model.transformer import Model  # noqa: E402
from llmlab.train.loop import Trainer, TrainConfig, training_flops_per_token  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.4
MODELS = {"gpt2": gpt2_124m, "llama": llama_400m}
GPU_DEFAULTS = {"gpt2": (16, 1024), "llama": (8, 2048)}  # batch, seq: the goals
CPU_DEFAULTS = {"gpt2": (1, 512), "llama": (1, 512)}


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def hf_config(name: str) -> dict:
    """The model's HF config dict, with dropout off as in GPT-2/nanoGPT-style pretraining."""
    config = MODELS[name]()
    config.update({key: 0.0 for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout")
                   if key in config})
    return config


def build_transformers(config: dict) -> torch.nn.Module:
    """transformers' own causal-LM model for the config, with SDPA attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(**config)
    hf._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(hf)


def build_llmlab(config: dict) -> torch.nn.Module:
    """llmlab's Model for the same HF config."""
    return Model(family_for(config).config_from_hf(config))


class RssPeak:
    """The largest resident set size growth over a baseline, sampled by a background thread (Linux)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.page = interval, os.sysconf("SC_PAGE_SIZE")
        self.baseline = self.peak = self.current()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def current(self) -> int:
        """Resident bytes now."""
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def stop(self) -> float:
        """Stop sampling; return the peak growth in GiB."""
        self.done.set()
        self.thread.join()
        return (max(self.peak, self.current()) - self.baseline) / 2**30


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> None:
    """glibc's M_MMAP_THRESHOLD (blocks this big or bigger are mmapped, and unmapped on free) and M_TRIM_THRESHOLD."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, mmap_bytes)
    libc.mallopt(-1, trim_bytes)


def random_batches(vocab_size: int, batch: int, seq: int, count: int = 4):
    """An endless cycle of a few random causal-LM batches (held on the CPU, moved by the Trainer like real data)."""
    generator = torch.Generator().manual_seed(0)
    fixed = [torch.randint(0, vocab_size, (batch, seq), generator=generator) for _ in range(count)]
    return ({"input_ids": ids, "labels": ids} for ids in itertools.cycle(fixed))


def warm_up(build, config: dict, train: TrainConfig, batch: int, seq: int, warmup: int) -> tuple[Trainer, float]:
    """Build the model and its Trainer, run the warm-up steps, and return the Trainer and its peak memory in GiB."""
    cuda = train.device.startswith("cuda")
    if cuda:
        sync(train.device)
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        sampler = RssPeak()
    torch.manual_seed(0)
    model = build(config).to(train.device).train()
    trainer = Trainer(model, train, random_batches(config["vocab_size"], batch, seq), progress=False)
    for _ in range(warmup):
        trainer.train_step()
    if cuda:
        sync(train.device)
        return trainer, (torch.cuda.max_memory_allocated() - baseline) / 2**30
    return trainer, sampler.stop()


def rate(tokens_per_s: float) -> str:
    """Tokens/s to three significant figures at least (a loaded CPU manages a few tokens/s)."""
    return f"{tokens_per_s:.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.3g}"


def measure(name: str, train: TrainConfig, batch: int, seq: int, windows: int, window: int, warmup: int) -> dict:
    """Per implementation: params, tokens/s (median window), peak memory; timed in alternating windows."""
    config = hf_config(name)
    trainers, peaks = {}, {}
    cpu = not train.device.startswith("cuda")
    if cpu:  # while memory is measured, freed blocks go back to the system so RSS tracks live memory
        set_malloc_thresholds(64 * 2**10, 0)
    for key, build in (("transformers", build_transformers), ("llmlab", build_llmlab)):
        trainers[key], peaks[key] = warm_up(build, config, train, batch, seq, warmup)
    if cpu:  # then glibc's own steady state for 64-bit (its dynamic thresholds' ceilings), so page faults don't count
        set_malloc_thresholds(32 * 2**20, 64 * 2**20)
    rates = {key: [] for key in trainers}
    order = list(trainers)
    for round_ in range(windows):
        for key in order if round_ % 2 == 0 else order[::-1]:
            sync(train.device)
            started = time.perf_counter()
            for _ in range(window):
                trainers[key].train_step()
            sync(train.device)
            rates[key].append(window * train.grad_accum * batch * seq / (time.perf_counter() - started))
            print(f"  {name} {key} window {round_ + 1}/{windows}: {rate(rates[key][-1])} tokens/s", file=sys.stderr)
    params = sum(p.numel() for p in trainers["llmlab"].model.parameters())
    model_config = trainers["llmlab"].model.config
    flops = training_flops_per_token(params, model_config.n_layers, model_config.d_model, seq)
    return {key: {"params": params, "tokens_per_s": statistics.median(rates[key]), "windows": rates[key],
                  "peak_gib": peaks[key], "flops_per_token": flops} for key in trainers}


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="autocast precision (train.precision); default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile both models")
    parser.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2 (124M), llama (~400M)")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (GPT-2) / 8 (LLaMA) on GPU, 1 on CPU")
    parser.add_argument("--seq", type=int, default=None, help="default: 1024 (GPT-2) / 2048 (LLaMA) on GPU, 512 on CPU")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 20 GPU, 3 CPU)")
    parser.add_argument("--window", type=int, default=None, help="steps per timing window (default 5 GPU, 1 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 5 GPU, 1 CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"peak for MFU (default on GPU: H100 bf16 dense {H100_BF16_DENSE_TFLOPS}; CPU: no MFU)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    precision = args.dtype or ("bf16" if cuda else "fp32")
    peak_tflops = args.peak_tflops or (H100_BF16_DENSE_TFLOPS if cuda else None)
    window = args.window or (5 if cuda else 1)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    import transformers

    names = [name.split("-")[0] for name in args.models.split(",")]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device={args.device} ({where}) precision={precision} compile={args.compile} "
          f"torch={torch.__version__} transformers={transformers.__version__}")
    print("memory: " + ("torch.cuda.max_memory_allocated above the pre-build allocation" if cuda else
                        "peak RSS growth over the pre-build RSS, sampled every 2 ms"))
    print(f"{'model':<7} {'impl':<13} {'params':>8} {'batch×seq':>10} {'tokens/s':>10} {'MFU':>6} "
          f"{'peak GiB':>9} {'ratio':>6}  windows (tokens/s)")
    for name in names:
        batch, seq = (GPU_DEFAULTS if cuda else CPU_DEFAULTS)[name]
        batch, seq = args.batch or batch, args.seq or seq
        train = TrainConfig(steps=10**6, lr=3e-4, warmup=100, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0,
                            grad_accum=args.grad_accum, precision=precision, compile=args.compile, device=args.device)
        rows = measure(name, train, batch, seq, max(1, steps // window), window, warmup)
        base = rows["transformers"]["tokens_per_s"]
        for key, row in rows.items():
            tps = row["tokens_per_s"]
            mfu = f"{row['flops_per_token'] * tps / (peak_tflops * 1e12):>6.1%}" if peak_tflops else f"{'-':>6}"
            windows = " ".join(rate(value) for value in row["windows"])
            print(f"{name:<7} {key:<13} {row['params'] / 1e6:>7.1f}M {batch:>4}×{seq:<5} {rate(tps):>10} {mfu} "
                  f"{row['peak_gib']:>9.2f} {tps / base:>6.2f}  {windows}", flush=True)
        paired = statistics.median(ours / theirs for ours, theirs in zip(rows["llmlab"]["windows"],
                                                                          rows["transformers"]["windows"]))
        print(f"{name:<7} llmlab / transformers, median of each round's adjacent windows: {paired:.2f}", flush=True)
        del rows
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
