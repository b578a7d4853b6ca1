"""The "native" attention backend: the dense backend, with a decode step's attention on the CPU through llmlab's kernel.

A decode step has one query per row and, over the ragged cache, a view of each row's own keys and values. torch's
flash attention for the CPU, made for blocks of queries, spends several times longer on that than reading the keys
takes; kernels/decode_attention.cpp attends each (row, head) in one pass, in float32 with an exact softmax.
Everything else (prefill, masks, position biases, autograd, other dtypes and devices) goes to the dense backend.
``prepack(model)`` selects this backend for a float32 CPU model where the kernel builds.

    model.set_attention_backend("native")   # after importing llmlab.infer
"""

from __future__ import annotations

import torch

from llmlab.infer import native
from llmlab.model.attention import DenseAttention, register_backend

KERNEL = "decode_attention"


class NativeDecodeAttention(DenseAttention):
    """Dense attention, with one query per row over unmasked keys through torch.ops.llmlab.decode_attention."""

    name = "native"

    def attend(self, q, k, v, lowered, scale: float | None, dropout: float) -> torch.Tensor:
        """Attention output [batch, heads, queries, head_dim]: the native kernel where it applies, else dense's."""
        mask, is_causal = lowered
        keys, values = (k, v) if isinstance(k, list) else ([k], [v])
        if (q.shape[2] == 1 and mask is None and not is_causal and dropout == 0 and q.device.type == "cpu"
                and q.dtype == keys[0].dtype == values[0].dtype == torch.float32
                and not (torch.is_grad_enabled() and q.requires_grad) and native.load(KERNEL)):
            if not isinstance(k, list):  # one tensor for every row: the kernel takes a view per row
                keys, values = list(k.split(1)), list(v.split(1))
            return torch.ops.llmlab.decode_attention(q, keys, values, q.shape[-1] ** -0.5 if scale is None else scale)
        return super().attend(q, k, v, lowered, scale, dropout)


BACKEND = NativeDecodeAttention()
register_backend(BACKEND)


def available() -> bool:
    """Whether the native kernel builds and loads here (else the backend is the dense one throughout)."""
    return native.load(KERNEL)
