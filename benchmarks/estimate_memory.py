"""Measured vs estimated peak memory of training steps and generation on small CPU configurations.

Run: PYTHONPATH=src python benchmarks/estimate_memory.py   (prints a markdown table for docs/scaling.md)
Peaks come from torch.profiler's CPU memory events (llmlab.scaling.estimate.measure_peak_bytes): every byte the CPU
allocator hands out and takes back, the model's own weights included, since they are built inside the measurement.
"""

from __future__ import annotations

import platform
import sys

import torch

from llmlab.model import Model, presets
from llmlab.scaling.estimate import inference_memory, measure_peak_bytes, run_training_steps, training_memory

# (label, preset, overrides, batch, seq_len, optimizer, activation checkpointing)
TRAINING = [
    ("gpt2 4×256", "gpt2", dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, vocab_size=2048), 8, 256, "adamw", False),
    ("gpt2 4×256 ckpt", "gpt2", dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, vocab_size=2048), 8, 256, "adamw",
     True),
    ("gpt2 8×512", "gpt2", dict(n_layers=8, d_model=512, n_heads=8, d_ff=2048, vocab_size=4096), 4, 256, "adamw",
     False),
    ("llama 4×256 GQA", "llama", dict(n_layers=4, d_model=256, n_heads=8, n_kv_heads=2, d_ff=688, vocab_size=2048),
     8, 256, "adamw", False),
    ("llama 4×256 adafactor", "llama", dict(n_layers=4, d_model=256, n_heads=8, n_kv_heads=2, d_ff=688,
                                           vocab_size=2048), 8, 256, "adafactor", False),
    ("llama 8×512 ckpt", "llama", dict(n_layers=8, d_model=512, n_heads=8, d_ff=1376, vocab_size=4096), 4, 256,
     "adamw", True),
]
# (label, preset, overrides, batch, prompt, new tokens)
GENERATION = [
    ("gpt2 4×256", "gpt2", dict(n_layers=4, d_model=256, n_heads=4, d_ff=1024, vocab_size=2048), 8, 192, 64),
    ("llama 8×512 MHA", "llama", dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=8, d_ff=1376, vocab_size=4096), 8, 192, 64),
    ("llama 8×512 MQA", "llama", dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=1, d_ff=1376, vocab_size=4096),
     8, 192, 64),
]


def generate(config, batch, prompt, new):
    """Build the model and generate greedily with the dynamic cache (float32)."""
    torch.manual_seed(0)
    model = Model(config).eval()
    ids = torch.randint(0, config.vocab_size, (batch, prompt))
    model.generate(ids, max_new_tokens=new, do_sample=False)


def rows():
    """(kind, label, command-line shape, measured MiB, estimated MiB, error %) for every configuration."""
    for label, name, overrides, batch, seq_len, optimizer, checkpointing in TRAINING:
        config = presets.get(name, "tiny", max_seq_len=1024, **overrides)
        measured, _ = measure_peak_bytes(lambda: run_training_steps(config, batch, seq_len, optimizer, checkpointing))
        estimated = training_memory(config, seq_len, batch, "fp32", optimizer, checkpointing).peak
        yield "train", label, f"B={batch} T={seq_len} {optimizer}", measured, estimated
    for label, name, overrides, batch, prompt, new in GENERATION:
        config = presets.get(name, "tiny", max_seq_len=1024, **overrides)
        measured, _ = measure_peak_bytes(lambda: generate(config, batch, prompt, new))
        estimated = inference_memory(config, prompt + new, batch, "fp32", prompt=prompt)["total"]
        yield "generate", label, f"B={batch} prompt={prompt} new={new}", measured, estimated


def main() -> None:
    """Print the measured-vs-estimated table."""
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, fp32 on the CPU")
    print("| kind | configuration | shape | measured MiB | estimated MiB | error |")
    print("|---|---|---|---|---|---|")
    for kind, label, shape, measured, estimated in rows():
        error = (estimated - measured) / measured * 100
        print(f"| {kind} | {label} | {shape} | {measured / 2**20:.1f} | {estimated / 2**20:.1f} | {error:+.1f}% |",
              flush=True)


if __name__ == "__main__":
    main()
