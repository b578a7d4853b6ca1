"""A prepacked CPU model's decode step in one native call (kernels/decode_step.cpp), over the ragged cache.

At one row on the CPU a decode step is a stream of weights through memory with a little arithmetic in between, and
Python runs that arithmetic: some thirty operations per layer, each a trip through the interpreter and the dispatcher,
and each slowed by cache misses because the matrix before it has just swept the caches. The native step runs the
same ATen operations in the same order, and llmlab's kernels for the products and the attention, from C++, so the
logits are the eager step's. ``lower(model)`` says whether a model can take it: a float32 pre-norm decoder on the
CPU whose linear layers are packed for the native kernel (``prepack``), with LayerNorm or RMSNorm, learned or rotary
positions, multi-head or grouped-query attention without windows or position biases, a dense MLP (gated or not),
sequential or parallel residuals. Anything else keeps the eager step.

    prepack(model)
    generate(model, prompts)   # on the CPU: decode steps through the native step where the model allows
"""

from __future__ import annotations

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
    """A model's weights and settings in the order decode_step takes them; call it for one step's logits."""

    def __init__(self, model):
        config = model.config
        self.model, self.config = model, config
        self.rotary = model.decoder.rotary
        self.linears = []  # (slot, PackedLinear): their packed copies are read at every call, packed again if changed
        blocks = model.decoder.blocks
        tokens = model.embed.tokens.weight
        positions = model.embed.positions.weight if config.position == "learned" else None
        final = model.decoder.norm
        self.fixed = [tokens, positions, _weight(final), _bias(final), None, _bias(model.head)]
        self.linears.append((4, model.head))
        for index, block in enumerate(blocks):
            base = len(self.fixed)
            attention, mlp = block.attn, block.mlp
            second_norm = getattr(block, "mlp_norm", None)
            layer = [_weight(block.attn_norm), _bias(block.attn_norm), None, None, None, None, None, None, None,
                     _bias(attention.o), _weight(second_norm), _bias(second_norm), None, None, None, None, None, None]
            projections = ([attention.qkv] if hasattr(attention, "qkv")
                           else [attention.q, attention.k, attention.v])
            for offset, linear in zip((2, 4, 6), projections):
                layer[offset + 1] = _bias(linear)
                self.linears.append((base + offset, linear))
            self.linears.append((base + 8, attention.o))
            for offset, linear in ((12, mlp.gate), (14, mlp.up), (16, mlp.down)):
                if linear is not None:
                    layer[offset + 1] = _bias(linear)
                    self.linears.append((base + offset, linear))
            self.fixed.extend(layer)
        first = blocks[0].attn
        self.settings = [
            len(blocks), first.n_heads, first.n_kv_heads, first.head_dim, config.d_ff, config.vocab_size,
            int(config.norm == "rmsnorm"), ACTIVATIONS.index(config.activation), int(config.is_gated),
            int(config.parallel_residual), int(config.parallel_shared_norm),
            ROPE_LAYOUTS.get(config.rope_layout, 0) if config.position == "rope" else 0,
            config.rotary_dim if config.position == "rope" else 0, int(config.position == "learned"),
            config.position_offset, int(final is not None), int(hasattr(first, "qkv")),
        ]
        scale = first.scale if first.scale is not None else first.head_dim ** -0.5
        self.scales = [config.norm_eps, scale, config.embedding_scale, config.head_input_scale]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache, slots: list[int],
                 spans: list[tuple[int, int]]) -> torch.Tensor:
        """Logits [rows, vocab] after ids [rows] at positions [rows], each row's keys and values written at its slot
        of cache's buffers, each row then attending to its span (start, length) of them."""
        weights = list(self.fixed)
        for slot, linear in self.linears:
            weights[slot] = linear.packed_weight()
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(positions[:, None])
            cos, sin = cos[:, :, 0], sin[:, :, 0]  # [rows, 1, rotary_dim]: one position per row
        return torch.ops.llmlab.decode_step(ids, positions, cos, sin, weights, self.settings, self.scales, cache.keys,
                                            cache.values, slots, [s for s, _ in spans], [n for _, n in spans])


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


def _supported(model) -> bool:
    """Whether every part of model is one that decode_step implements, packed for the native kernel."""
    config = getattr(model, "config", None)
    if config is None or config.arch not in ("decoder", "prefix_decoder") or not config.lm_head:
        return False
    if (config.norm_placement != "pre" or config.embedding_norm or config.residual_scale != 1.0
            or config.embed_proj_dim or config.type_vocab_size or config.head_transform or config.n_experts
            or config.position not in ("learned", "rope") or config.attn_window is not None
            or config.layer_kinds is not None or config.activation not in ACTIVATIONS
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
    if not all(type(m) is PackedLinear and m.packed_weight() is not None and not m.packed_weight().is_mkldnn
               for m in linears):
        return False
    parameters = list(model.parameters())
    if not all(p.dtype == torch.float32 and p.device.type == "cpu" for p in parameters):
        return False
    return all(native.load(kernel) for kernel in KERNELS)
