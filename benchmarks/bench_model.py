"""Forward+backward training throughput of llmlab's Model against transformers' own model at the same config.

Both models are built from one Hugging Face config (llmlab's through its HF adapter), timed in alternating rounds in
one process, and reported as tokens/s, MFU and peak memory, with the llmlab/transformers ratio.

    python benchmarks/bench_model.py                      # CPU: small batch and sequence
    python benchmarks/bench_model.py --device cuda --dtype bf16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmlab.model.hf import family_for
from llmlab.model.transformer import Model

PEAK_TFLOPS = {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}  # H100 SXM dense tensor-core peaks


def gpt2_124m() -> dict:
    """The GPT-2 small config."""
    from transformers import GPT2Config
    return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12).to_dict()


def llama_400m() -> dict:
    """A LLaMA-style config of about 400M parameters (24 layers, width 1024, SwiGLU 2816, vocab 32000)."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                       tie_word_embeddings=False).to_dict()


MODELS = {"gpt2-124m": gpt2_124m, "llama-400m": llama_400m}


def build(name: str, device: str, dtype: torch.dtype, compile_: bool):
    """The transformers model and the llmlab model for one config, on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_dict = MODELS[name]()
    hf_config = AutoConfig.for_model(**hf_dict)
    hf_config._attn_implementation = "sdpa"
    theirs = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).to(device)
    ours = Model(family_for(hf_dict).config_from_hf(hf_dict)).to(device=device, dtype=dtype)
    if compile_:
        theirs, ours = torch.compile(theirs), torch.compile(ours)
    return hf_dict, theirs, ours


def flops_per_token(params: int, n_layers: int, d_model: int, seq: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention (Chowdhery et al. 2022, app. B)."""
    return 6 * params + 12 * n_layers * d_model * seq


def step(model, ids: torch.Tensor) -> None:
    """One forward and backward pass with the causal-LM loss."""
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    for p in model.parameters():
        p.grad = None


def sync(device: str) -> None:
    """Wait for queued device work."""
    if device == "cuda":
        torch.cuda.synchronize()


def measure(name: str, device: str, dtype: torch.dtype, batch: int, seq: int, steps: int, warmup: int, compile_: bool):
    """Tokens/s (median of steps), MFU and peak memory of both models, timed in alternating order."""
    hf_dict, theirs, ours = build(name, device, dtype, compile_)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, hf_dict["vocab_size"], (batch, seq), generator=generator).to(device)
    models = {"transformers": theirs, "llmlab": ours}
    times = {k: [] for k in models}
    peak = {}
    for key, model in models.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step(model, ids)
        sync(device)
        peak[key] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    for _ in range(steps):
        for key, model in models.items():
            sync(device)
            start = time.perf_counter()
            step(model, ids)
            sync(device)
            times[key].append(time.perf_counter() - start)
    params = sum(p.numel() for p in ours.parameters())
    layers = hf_dict.get("num_hidden_layers", hf_dict.get("n_layer"))
    width = hf_dict.get("hidden_size", hf_dict.get("n_embd"))
    per_token = flops_per_token(params, layers, width, seq)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    rows = {}
    for key in models:
        tokens_per_s = batch * seq / statistics.median(times[key])
        mfu = per_token * tokens_per_s / (PEAK_TFLOPS[dtype_name] * 1e12) if device == "cuda" else float("nan")
        rows[key] = (tokens_per_s, mfu, peak[key])
    del theirs, ours, models
    return params, rows


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--models", default="gpt2-124m,llama-400m")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None, help="default: 1024 (GPT-2) / 2048 (LLaMA) on GPU, 256 on CPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype or ("bf16" if cuda else "fp32")]
    torch.manual_seed(0)
    print(f"device={args.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}) "
          f"dtype={dtype} compile={args.compile} torch={torch.__version__}")
    print(f"{'model':<12} {'impl':<13} {'params':>8} {'batch×seq':>10} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'ratio':>6}")
    for name in args.models.split(","):
        seq = args.seq or ((1024 if name.startswith("gpt2") else 2048) if cuda else 256)
        batch = args.batch or ((16 if name.startswith("gpt2") else 8) if cuda else 2)
        steps = args.steps or (20 if cuda else 3)
        warmup = args.warmup or (5 if cuda else 1)
        params, rows = measure(name, args.device, dtype, batch, seq, steps, warmup, args.compile)
        base = rows["transformers"][0]
        for key, (tps, mfu, peak) in rows.items():
            print(f"{name:<12} {key:<13} {params / 1e6:>7.1f}M {batch:>4}×{seq:<5} {tps:>10.0f} "
                  f"{mfu:>6.1%} {peak:>9.2f} {tps / base:>6.2f}")
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
