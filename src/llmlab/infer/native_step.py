"""A prepacked CPU model's decode step in one native call (kernels/decode_step.cpp), over the ragged cache.

At one row on the CPU a decode step is a stream of weights through memory with a little arithmetic in between, and
Python runs that arithmetic: some thirty operations per layer, each a trip through the interpreter and the dispatcher,
and each slowed by cache misses because the matrix before it has just swept the caches. The native step computes
from C++ what the eager step computes: the norms, residuals and rotary positions by the modules' formulas on raw
rows, the activations through ATen's own kernels, the products and the attention through llmlab's kernels, so its
logits are the eager step's to float32 rounding. ``lower(model)`` says whether a model can take it: a float32
pre-norm decoder on the
CPU whose linear layers are packed for the native kernel (``prepack``), with LayerNorm or RMSNorm, learned or rotary
positions, multi-head or grouped-query attention (global or in a sliding window) without position biases, a dense MLP
(gated or not), sequential or parallel residuals. Anything else keeps the eager step.

    prepack(model)
    generate(model, prompts)   # on the CPU: decode steps through the native step where the model allows
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmlab.infer import native
from llmlab.infer.prepack import PackedLinear
from llmlab.model.attention import Attention
from llmlab.model.mlp import MLP
from llmlab.model.norms import RMSNorm

KERNELS = ("blocked_linear", "decode_attention", "decode_step")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
ROPE_LAYOUTS = {"half": 1, "interleaved": 2}


class NativeStep:
    """A model's settings in the order decode_step takes them; bind() adds its weights for one generation."""

    def __init__(self, model):
        config = model.config
        self.model = model
        first = model.decoder.blocks[0].attn
        self.settings = [
            config.n_layers, first.n_heads, first.n_kv_heads, first.head_dim, config.d_ff, config.vocab_size,
            int(config.norm == "rmsnorm"), ACTIVATIONS.index(config.activation), int(config.is_gated),
            int(config.parallel_residual), int(config.parallel_shared_norm),
            ROPE_LAYOUTS.get(config.rope_layout, 0) if config.position == "rope" else 0,
            config.rotary_dim if config.position == "rope" else 0, int(config.position == "learned"),
            config.position_offset, int(model.decoder.norm is not None), int(hasattr(first, "qkv")),
        ]
        scale = first.scale if first.scale is not None else first.head_dim ** -0.5
        self.scales = [config.norm_eps, scale, config.embedding_scale, config.head_input_scale]
        self.windows = [config.attn_window if config.layer_kind(i) == "local" else 0 for i in range(config.n_layers)]

    def weights(self) -> list[torch.Tensor | None]:
        """The model's weights as they are now, in decode_step's order: the embeddings, the final norm and the head,
        then per layer its norms, projections and MLP (linear layers as their packed copies; None where absent)."""
        model = self.model
        final = model.decoder.norm
        positions = model.embed.positions.weight if hasattr(model.embed, "positions") else None
        weights = [model.embed.tokens.weight, positions, _weight(final), _bias(final), *_linear(model.head)]
        for block in model.decoder.blocks:
            attention, mlp = block.attn, block.mlp
            projections = [attention.qkv, None, None] if hasattr(attention, "qkv") else [attention.q, attention.k,
                                                                                       attention.v]
            second_norm = getattr(block, "mlp_norm", None)
            weights += [_weight(block.attn_norm), _bias(block.attn_norm)]
            for linear in projections:
                weights += _linear(linear)
            weights += [*_linear(attention.o), _weight(second_norm), _bias(second_norm)]
            for linear in (mlp.gate, mlp.up, mlp.down):
                weights += _linear(linear)
        return weights

    def bind(self, positions: int) -> Callable[..., torch.Tensor]:
        """This generation's step: (ids [rows], cache, positions, slots, spans) → logits [rows, vocab], each row's
        token at its position (below positions), its keys and values written at its slot of cache's buffers, and the
        row attending to its span (start, length) of them. The weights are taken (and packed) once, here."""
        cos = sin = None
        rotary = self.model.decoder.rotary
        if rotary is not None:  # every position's, computed as the eager step computes them
            cos, sin = (table[0, 0] for table in rotary.cos_sin(torch.arange(positions)[None]))
        weights = self.weights()

        def step(ids: torch.Tensor, cache, row_positions: list[int], slots: list[int],
                 spans: list[tuple[int, int]]) -> torch.Tensor:
            return torch.ops.llmlab.decode_step(ids, row_positions, cos, sin, weights, self.settings, self.scales,
                                                cache.keys, cache.values, slots, [start for start, _ in spans],
                                                [length for _, length in spans], self.windows)
        return step


def _linear(linear: nn.Module | None) -> list[torch.Tensor | None]:
    """A linear layer's packed weight and its bias, or two Nones."""
    return [None, None] if linear is None else [linear.packed_weight(), linear.bias]


def _weight(norm: nn.Module | None) -> torch.Tensor | None:
    return None if norm is None else norm.weight


def _bias(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else getattr(module, "bias", None)


def lower(model) -> NativeStep | None:
    """The native step for model, built once and kept on it; None where the model cannot take it (see the module's
    docstring) or the kernels do not build here."""
    if getattr(model, "training", True) or getattr(model, "attention_backend", None) != "native":
        return None  # prepack chose the native backend; a model being trained keeps autograd's path
    step = model.__dict__.get("_native_step", False)
    if step is False:
        step = model.__dict__["_native_step"] = NativeStep(model) if _supported(model) else None
    return step


def forget(model) -> None:
    """Drop the native step kept on model, so that the next lower() looks at its layers again (prepack, unpack)."""
    model.__dict__.pop("_native_step", None)


def _supported(model) -> bool:
    """Whether every part of model is one that decode_step implements, packed for the native kernel."""
    config = getattr(model, "config", None)
    if config is None or config.arch not in ("decoder", "prefix_decoder") or not config.lm_head:
        return False
    if (config.norm_placement != "pre" or config.embedding_norm or config.residual_scale != 1.0
            or config.embed_proj_dim or config.type_vocab_size or config.head_transform or config.n_experts
            or config.position not in ("learned", "rope") or config.activation not in ACTIVATIONS
            or (config.position == "rope" and config.rope_layout not in ROPE_LAYOUTS)):
        return False
    blocks = model.decoder.blocks
    linears = [model.head]
    for block in blocks:
        if (not isinstance(block.attn, Attention) or type(block.mlp) is not MLP or hasattr(block, "cross_attn")
                or hasattr(block, "relative_bias") or hasattr(block, "attn_out_norm")):
            return False
        linears += [m for m in block.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, RMSNorm))]
    if any(type(norm) is not (RMSNorm if config.norm == "rmsnorm" else nn.LayerNorm) for norm in norms):
        return False
    if not all(type(m) is PackedLinear and not m.packed_weight().is_mkldnn for m in linears):
        return False
    if not all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters()):
        return False
    return all(native.load(kernel) for kernel in KERNELS)
