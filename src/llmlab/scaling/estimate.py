"""FLOPs and memory of a model (survey §2.1): per-token compute, training memory (weights, gradients, optimiser
state, activations; sharded with ZeRO / FSDP) and inference memory with the key/value cache.

The activation terms follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", §4.1: s·b·h·(34 + 5·a·s/h) bytes per layer in fp16 with dropout and without recomputation), adapted to
what llmlab's blocks actually keep for the backward pass: no dropout masks or outputs when dropout is 0, no s×s
attention matrix (SDPA's flash / memory-efficient kernels keep the output and a log-sum-exp per head instead),
RMSNorm's normalised tensor (it is written in Python, so autograd keeps it), grouped-query key/value widths,
gated MLPs and the loss's logits. docs/scaling.md compares these figures with measured peaks.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1, "int8": 1}
OPTIMIZER_STATES = ("adamw", "adafactor")
ZERO_STAGES = (0, 1, 2, 3)
# Hoffmann et al. 2022, approach 3 (Table A3 / eq. 10): L(N, D) = E + A / N^alpha + B / D^beta
HOFFMANN_FIT = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022, Table 3 (approaches 1 and 2): D_opt ≈ 20 N
FP32 = 4


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (fp32, bf16, fp16, fp8, int8)."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}.")
    return DTYPE_BYTES[dtype]


def positive(name: str, value, allow_zero: bool = False):
    """value itself, or a ConfigError when it is not a positive number (or non-negative with allow_zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, not {value!r}.")
    return value


# --- FLOPs -----------------------------------------------------------------------------------------------------------

def training_flops_per_token(n_parameters: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Forward and backward FLOPs per token, 6N + 12·L·d·T (PaLM, Chowdhery et al. 2022, appendix B)."""
    return 6 * n_parameters + 12 * n_layers * d_model * seq_len


def inference_flops_per_token(n_parameters: int, n_layers: int, d_model: int, context: int) -> float:
    """Forward FLOPs per token with `context` keys attended to: 2N + 4·L·d·T (a third of the training figure)."""
    return 2 * n_parameters + 4 * n_layers * d_model * context


def training_compute(n_parameters: int, tokens: float) -> float:
    """Training FLOPs C ≈ 6·N·D (Kaplan et al. 2020; Hoffmann et al. 2022)."""
    return 6 * n_parameters * tokens


def chinchilla_tokens(n_parameters: float, rule: str = "20:1") -> float:
    """The compute-optimal token count for a model of n_parameters: the 20:1 rule, or approach 3's closed form."""
    if rule == "20:1":
        return CHINCHILLA_TOKENS_PER_PARAMETER * n_parameters
    if rule != "approach3":
        raise ConfigError(f"Unknown Chinchilla rule {rule!r}; choose 20:1 or approach3.")
    # N_opt(C) = G·(C/6)^(β/(α+β)), G = (αA / βB)^(1/(α+β)) (Hoffmann et al. eq. 4); invert for C, then D = C/6N
    fit = HOFFMANN_FIT
    a, b = fit["alpha"], fit["beta"]
    g = (a * fit["A"] / (b * fit["B"])) ** (1 / (a + b))
    c_over_6 = (n_parameters / g) ** ((a + b) / b)
    return c_over_6 / n_parameters


# --- the shape of a model --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """What the estimates need of a model: its parameter counts (built on the meta device) and its widths."""

    parameters: int
    active_parameters: int  # a mixture of experts runs moe_top_k of its experts per token
    matrix_parameters: list[tuple[int, ...]] = field(repr=False)  # every parameter's shape (for Adafactor)
    attention_layers: int  # self-attention layers a token passes (encoder + decoder)
    cache_layers: int  # decoder layers that keep keys/values
    largest_block: int  # parameters of the largest block (FSDP unshards one at a time)


def model_shape(config: ModelConfig) -> Shape:
    """Count the parameters of a config's Model on the meta device (no memory, no time)."""
    from llmlab.model.moe import MoE
    from llmlab.model.transformer import Block, Model

    with torch.device("meta"):
        model = Model(config)
    total = model.num_parameters()
    inactive = 0
    for module in model.modules():
        if isinstance(module, MoE):
            experts = sum(p.numel() for p in module.experts.parameters())
            inactive += experts * (1 - config.moe_top_k / config.n_experts)
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, Block)]
    attention_layers = (config.n_layers if config.has_encoder else 0) + (
        (config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers) if config.has_decoder else 0)
    cache_layers = 0 if not config.has_decoder else (
        config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers)
    shapes = [tuple(p.shape) for p in model.parameters()]
    return Shape(total, round(total - inactive), shapes, attention_layers, cache_layers, max(blocks, default=0))


def kv_cache_bytes_per_token(config: ModelConfig, dtype: str = "bf16") -> int:
    """Key/value cache bytes per token of context: 2 · decoder layers · key/value heads · head width · bytes."""
    layers = 0 if not config.has_decoder else (
        config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers)
    return 2 * layers * config.kv_heads * config.dim_head * dtype_bytes(dtype)


# --- activations -----------------------------------------------------------------------------------------------------

def block_activation_elements(config: ModelConfig, cross: bool = False) -> float:
    """Elements per token one block keeps for the backward pass (Korthikanti et al.'s 34·s·b·h bytes, recounted for
    llmlab in elements: no dropout, SDPA without the s×s matrix, RMSNorm's kept tensor, GQA and gated MLPs)."""
    h, f = config.d_model, config.d_ff
    q, kv = config.n_heads * config.dim_head, config.kv_heads * config.dim_head
    norm = h * (2 if config.norm == "rmsnorm" else 1)  # its input (and RMSNorm's x·rsqrt); the output: its consumer's
    if config.norm_placement == "sandwich":
        norm *= 2
    attention = (h  # the projections' input (the norm's output)
                 + q + 2 * kv  # q, k, v kept by SDPA
                 + (q + kv if config.position == "rope" else 0)  # the rotated q, k beside the projections' output
                 + q + config.n_heads  # SDPA's output and log-sum-exp
                 + q)  # the output projection's input (heads flattened: a copy)
    mlp = h + (4 * f if config.is_gated else 2 * f)  # input; gate, act, up, product (gated) or act in, act out
    if config.n_experts:  # top-k copies of each token through its experts, and the router's logits
        mlp = h + config.moe_top_k * (mlp - h + h) + config.n_experts
    norms = 1 if config.parallel_residual and config.parallel_shared_norm else 2
    total = attention + mlp + norms * norm - (h if norms == 1 else 0)
    if cross:
        total += norm + h + q + q + config.n_heads + q  # queries, SDPA's output, the projection's input
    return total


def attention_mask_bytes(config: ModelConfig, seq_len: int, batch: int) -> float:
    """The additive score bias of ALiBi or relative positions ([heads, s, s] per layer kind, float32), else 0."""
    if config.position not in ("alibi", "relative"):
        return 0.0
    kinds = len(set(config.layer_kinds or ("global",)))
    layers = config.n_layers if config.relative_per_layer else kinds
    return float(layers * config.n_heads * seq_len * seq_len * FP32)


def logits_elements(config: ModelConfig) -> int:
    """Per token, the vocabulary-sized tensors alive at the loss: the logits, the shifted copy and log-softmax's
    output (calibrated: three of them at the peak; see docs/scaling.md)."""
    return 3 * config.vocab_size if config.lm_head else 0


def activation_bytes(config: ModelConfig, seq_len: int, batch: int, dtype: str = "fp32",
                     checkpointing: bool = False) -> dict[str, float]:
    """Activation memory of one micro-batch at its peak: blocks, head and loss, in bytes (float32 loss tensors)."""
    tokens = seq_len * batch
    width = dtype_bytes(dtype)
    stacks = []
    if config.has_encoder:
        stacks.append((config.n_layers, False))
    if config.has_decoder:
        layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
        stacks.append((layers, config.arch == "encoder_decoder"))
    blocks = 0.0
    largest = 0.0
    for layers, cross in stacks:
        per_block = block_activation_elements(config, cross) * tokens * width
        largest = max(largest, per_block)
        # checkpointed: each block keeps only its input; one block's activations are rebuilt at a time
        blocks += layers * tokens * config.d_model * width if checkpointing else layers * per_block
    head = tokens * config.d_model * width * (3 if config.norm == "rmsnorm" else 2)  # final norm in, (x·rsqrt), out
    loss = tokens * logits_elements(config) * FP32  # cross-entropy runs in float32
    return {"blocks": blocks, "head": head, "loss": loss, "masks": attention_mask_bytes(config, seq_len, batch),
            "one_block": largest}


def activation_peak(parts: dict[str, float], checkpointing: bool) -> float:
    """The most activation memory alive at once: everything at the loss, or with checkpointing the blocks' inputs
    and the larger of the loss's tensors and one recomputed block (the loss is freed before the blocks' backward)."""
    kept = parts["blocks"] + parts["head"] + parts["masks"]
    return kept + (max(parts["loss"], parts["one_block"]) if checkpointing else parts["loss"])


# --- training and inference memory -------------------------------------------------------------------------------------

def optimizer_state_bytes(shape: Shape, optimizer: str = "adamw") -> int:
    """Optimiser state in float32: AdamW's two moments; Adafactor's factored second moment (rows + columns of each
    matrix, the whole of each vector) and a step count per tensor, as torch.optim.Adafactor keeps them."""
    if optimizer not in OPTIMIZER_STATES:
        raise ConfigError(f"Unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATES)}.")
    if optimizer == "adamw":
        return 2 * shape.parameters * FP32 + len(shape.matrix_parameters) * FP32
    elements = 0
    for dims in shape.matrix_parameters:
        if len(dims) >= 2:
            elements += math.prod(dims[:-2]) * (dims[-2] + dims[-1])
        else:
            elements += math.prod(dims)
        elements += 1  # step
    return elements * FP32


@dataclass
class TrainingMemory:
    """Bytes per rank of one training step: the four parts, the peak, and the same under each ZeRO stage."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    activation_parts: dict
    peak: float
    sharded: dict = field(default_factory=dict)  # "zero-0".."zero-3" -> bytes per rank over the shards

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def training_memory(config: ModelConfig, seq_len: int, batch: int = 1, dtype: str = "fp32",
                    optimizer: str = "adamw", checkpointing: bool = False, shards: int = 1,
                    shape: Shape | None = None) -> TrainingMemory:
    """Memory of a training step as llmlab's Trainer takes it: float32 parameters, gradients and optimiser state
    (mixed precision autocasts to `dtype`, keeping a cast copy of the weights), activations in `dtype`.

    The peak is weights + optimiser state + the larger of the activations and the gradients with one block's
    activations (the backward pass frees activations as it writes gradients); ZeRO stage 1 shards the optimiser state over `shards` ranks, stage 2 the
    gradients too, stage 3 (FSDP) the weights too, gathering one block at a time.
    """
    positive("seq_len", seq_len), positive("batch", batch), positive("shards", shards)
    shape = shape or model_shape(config)
    weights = shape.parameters * FP32
    cast = shape.parameters * dtype_bytes(dtype) if dtype_bytes(dtype) != FP32 else 0  # autocast's weight copies
    gradients = shape.parameters * FP32
    state = optimizer_state_bytes(shape, optimizer)
    parts = activation_bytes(config, seq_len, batch, dtype, checkpointing)
    activations = activation_peak(parts, checkpointing) + cast

    def peak(w_share: float, g_share: float, o_share: float, gathered: float) -> float:
        # early in the backward pass every activation is alive; at its end every gradient and one block's activations
        return weights / w_share + gathered + state / o_share + max(activations,
                                                                    gradients / g_share + parts["one_block"])

    block = shape.largest_block * FP32
    sharded = {"zero-0": peak(1, 1, 1, 0), "zero-1": peak(1, 1, shards, 0), "zero-2": peak(1, shards, shards, 0),
               "zero-3": peak(shards, shards, shards, block if shards > 1 else 0)}
    return TrainingMemory(weights, gradients, state, activations, parts, sharded["zero-0"], sharded)


def inference_memory(config: ModelConfig, context: int, batch: int = 1, dtype: str = "bf16",
                     shape: Shape | None = None, prompt: int | None = None) -> dict[str, float]:
    """Bytes to generate with `batch` rows of `context` tokens: weights, the key/value cache (grouped- and multi-query
    attention store kv_heads heads), and the largest working tensors of the prefill of `prompt` tokens (default:
    the whole context)."""
    positive("context", context), positive("batch", batch)
    shape = shape or model_shape(config)
    width = dtype_bytes(dtype)
    tokens = (context if prompt is None else positive("prompt", prompt)) * batch
    weights = shape.parameters * width
    cache = kv_cache_bytes_per_token(config, dtype) * context * batch
    # a forward without gradients holds the residual stream, a norm's output and the MLP's widest pair at once
    f = config.d_ff * (2 if config.is_gated else 1)
    working = tokens * (2 * config.d_model + f + config.d_ff) * width
    working += attention_mask_bytes(config, tokens // batch, batch)
    working += batch * config.vocab_size * FP32 if config.lm_head else 0  # the last position's logits
    return {"weights": weights, "kv_cache": cache, "working": working, "total": weights + cache + working}


# --- what to estimate --------------------------------------------------------------------------------------------------

def resolve_model(spec: str) -> tuple[ModelConfig, str]:
    """A ModelConfig from "PRESET[:SIZE]" (e.g. llama:7b, gpt2) or a checkpoint directory (its config only)."""
    from llmlab.model import presets

    path = Path(spec)
    if path.is_dir():
        return config_from_directory(path), str(path)
    if os.sep in spec or spec.startswith("."):
        raise CheckpointError(f"{spec} is not a directory; give a checkpoint directory or a preset as NAME[:SIZE].")
    name, _, size = spec.partition(":")
    config = presets.get(name, size or None)
    return config, f"{name}:{size}" if size else name


def config_from_directory(path: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint directory: llmlab.json, else a Hugging Face config.json (no weights read)."""
    from llmlab.model.checkpoint import CONFIG_FILE, read_llmlab_config
    from llmlab.model.hf import family_for, read_hf_config

    if (path / CONFIG_FILE).exists():
        return read_llmlab_config(path)[0]
    if (path / "config.json").exists():
        hf = read_hf_config(path)
        return family_for(hf).config_from_hf(hf)
    raise CheckpointError(f"{path} has neither {CONFIG_FILE} (llmlab) nor config.json (Hugging Face).")


def estimate(config: ModelConfig, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16",
             optimizer: str = "adamw", checkpointing: bool = False, shards: int = 1) -> dict:
    """Every estimate for one model: parameters, FLOPs per token, training and inference memory (a JSON-ready dict)."""
    seq_len = config.max_seq_len if seq_len is None else seq_len
    positive("seq_len", seq_len), positive("batch", batch), positive("shards", shards)
    dtype_bytes(dtype)
    if shards != int(shards):
        raise ConfigError(f"shards must be a whole number of ranks, not {shards!r}.")
    shape = model_shape(config)
    width = config.n_heads * config.dim_head  # the attention term's d is the attention width (T5-3B: 4096)
    train = training_memory(config, seq_len, batch, dtype, optimizer, checkpointing, int(shards), shape)
    without = training_memory(config, seq_len, batch, dtype, optimizer, not checkpointing, int(shards), shape)
    return {
        "parameters": shape.parameters, "active_parameters": shape.active_parameters, "seq_len": seq_len,
        "batch": batch, "dtype": dtype, "optimizer": optimizer, "activation_checkpointing": checkpointing,
        "shards": int(shards),
        "flops_per_token": {
            "training": training_flops_per_token(shape.active_parameters, shape.attention_layers, width, seq_len),
            "training_6n": 6 * shape.active_parameters,
            "inference": inference_flops_per_token(shape.active_parameters, shape.attention_layers, width, seq_len),
            "inference_2n": 2 * shape.active_parameters,
        },
        "training_memory": train.to_dict(),
        "activations_other_checkpointing": without.activations,
        "inference_memory": inference_memory(config, seq_len, batch, dtype, shape),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, dtype),
    }


# --- measurement -------------------------------------------------------------------------------------------------------

def measure_peak_bytes(function) -> tuple[int, object]:
    """(peak bytes the CPU allocator held above its level at the call, function's result), from torch.profiler's
    memory events: every allocation and free torch makes on the CPU, in order."""
    import gc

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    gc.disable()  # a cycle collection at an arbitrary moment would move the peak from run to run
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = function()
    finally:
        gc.enable()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, result


def run_training_steps(config: ModelConfig, batch: int, seq_len: int, optimizer: str = "adamw",
                       checkpointing: bool = False, steps: int = 2) -> None:
    """The workload whose peak training_memory estimates: build the model and optimiser, then run steps fp32 steps
    on random ids as Trainer.train_step does (loss, backward, clipping, optimiser step)."""
    from llmlab.model.transformer import Model
    from llmlab.objectives.losses import language_model_loss
    from llmlab.train.loop import enable_activation_checkpointing  # train/ builds on scaling/: imported on use
    from llmlab.train.optim import build_optimizer

    torch.manual_seed(0)
    model = Model(config).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    opt = build_optimizer(model, optimizer, lr=1e-4, weight_decay=0.1)
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch, seq_len))
        opt.zero_grad(set_to_none=True)
        summed, count, _ = language_model_loss(model, {"input_ids": ids, "labels": ids})
        (summed / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    opt.zero_grad(set_to_none=True)
