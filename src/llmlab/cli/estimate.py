"""`llmlab estimate MODEL_OR_PRESET`: FLOPs per token, training memory (ZeRO stages) and inference memory.

MODEL_OR_PRESET is a preset as NAME[:SIZE] (llama:7b, gpt2, switch:base-8; `llmlab presets` lists them) or a
checkpoint directory, of which only the config is read (llmlab.json, or config.json through the HF adapters).
"""

from __future__ import annotations

import argparse
import json

from llmlab.cli.catalog import human


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the estimate subcommand."""
    parser = subparsers.add_parser("estimate", help="FLOPs and memory of training and inference for a model")
    parser.add_argument("model", metavar="MODEL_OR_PRESET", help="a preset NAME[:SIZE] or a checkpoint directory")
    parser.add_argument("--seq-len", type=int, metavar="T", help="sequence / context length (default: max_seq_len)")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="micro-batch per rank (default 1)")
    parser.add_argument("--dtype", default="bf16", help="compute dtype: fp32, bf16, fp16, fp8, int8 (default bf16)")
    parser.add_argument("--optimizer", default="adamw", help="adamw or adafactor (default adamw)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute each block's activations")
    parser.add_argument("--shards", type=int, default=1, metavar="W", help="data-parallel ranks to shard over")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or JSON")
    parser.set_defaults(handler=run_estimate)


def report(label: str, result: dict) -> str:
    """The estimate as readable lines."""
    flops, train, infer = result["flops_per_token"], result["training_memory"], result["inference_memory"]
    gib = lambda value: human(value, "bytes")  # noqa: E731
    other = "without" if result["activation_checkpointing"] else "with"
    lines = [
        f"{label}: {human(result['parameters'], 'count')} parameters"
        + (f" ({human(result['active_parameters'], 'count')} active)"
           if result["active_parameters"] != result["parameters"] else ""),
        f"T={result['seq_len']} B={result['batch']} dtype={result['dtype']} optimizer={result['optimizer']} "
        f"activation checkpointing={'on' if result['activation_checkpointing'] else 'off'} shards={result['shards']}",
        "",
        "FLOPs per token",
        f"  training   {flops['training']:.3e}  (6N = {flops['training_6n']:.3e}, + 12·L·d·T)",
        f"  inference  {flops['inference']:.3e}  (2N = {flops['inference_2n']:.3e}, + 4·L·d·T)",
        "",
        "Training memory per rank (float32 weights, gradients and optimiser state)",
        f"  weights       {gib(train['weights'])}",
        f"  gradients     {gib(train['gradients'])}",
        f"  optimizer     {gib(train['optimizer'])}",
        f"  activations   {gib(train['activations'])}  ({other} checkpointing: "
        f"{gib(result['activations_other_checkpointing'])})",
        f"  peak          {gib(train['peak'])}",
        f"  sharded over {result['shards']} rank(s): "
        + ", ".join(f"{stage} {gib(value)}" for stage, value in train["sharded"].items()),
        "",
        f"Inference memory ({result['dtype']}, batch {result['batch']}, context {result['seq_len']})",
        f"  weights       {gib(infer['weights'])}",
        f"  KV cache      {gib(infer['kv_cache'])}  ({gib(result['kv_cache_bytes_per_token'])} per token)",
        f"  working       {gib(infer['working'])}",
        f"  total         {gib(infer['total'])}",
    ]
    return "\n".join(lines)


def run_estimate(arguments: argparse.Namespace) -> None:
    """Resolve the model, estimate, print."""
    from llmlab.scaling.estimate import estimate, resolve_model

    config, label = resolve_model(arguments.model)
    result = estimate(config, arguments.seq_len, arguments.batch, arguments.dtype, arguments.optimizer,
                      arguments.activation_checkpointing, arguments.shards)
    print(json.dumps({"model": label, **result}, indent=2) if arguments.format == "json" else report(label, result))
