"""Linear weights prepacked for oneDNN, for inference on the CPU.

On the CPU, ``F.linear`` hands a forward call's rows to MKL's GEMM over the row-major weight, which at the few rows of
a decode step runs far below both the machine's FLOPs and its memory bandwidth. oneDNN's inner product over a copy of
the weight reordered once into its blocked layout is 1.6–2.1× faster for one row, 2.5–2.9× for 16 and 1.5–2.7× for
256 on this project's machines (GPT-2 124M's linears, two threads; benchmarks/bench_prepack.py, docs/benchmarks.md).

``prepack(model)`` turns every plain ``nn.Linear`` of a CPU model into a :class:`PackedLinear`, which keeps such a
copy, uses it whenever no gradient is needed, and packs it again after the weight has changed (an optimizer step,
``load_state_dict``); with a gradient it is ``F.linear`` as before. The copies take as much memory as the linear
weights themselves; ``unpack(model)`` frees them.

    prepack(model)        # serving or generating on the CPU
    generate(model, prompts, config)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class _Packed:
    """A PackedLinear's packed copy and the weight's (data pointer, version) it was packed from. A oneDNN tensor has
    no storage that copy.deepcopy or torch.save could read, so a copy or a pickle of the module gets an empty one
    (packed again on first use)."""

    __slots__ = ("key", "tensor")

    def __init__(self):
        self.key, self.tensor = None, None

    def __deepcopy__(self, memo) -> "_Packed":
        return _Packed()

    def __reduce__(self):
        return _Packed, ()


class PackedLinear(nn.Linear):
    """An nn.Linear that, where autograd is not needed, multiplies by a oneDNN-blocked copy of its weight."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T + bias: through the packed copy without autograd, else F.linear."""
        weight = self.weight
        if (input.dtype != weight.dtype or input.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))):
            return F.linear(input, weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(input, self.packed_weight(), self.bias, "none", [], "")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, packed again if the weight changed since it was last packed."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version)
        packed = self.__dict__.get("_packed")
        if packed is None:
            packed = self.__dict__["_packed"] = _Packed()
        if packed.key != key:
            packed.key, packed.tensor = key, torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        return packed.tensor


def prepack(model: nn.Module) -> int:
    """Make every plain nn.Linear of model whose weight is float32 or bfloat16 on the CPU a PackedLinear, in place,
    and pack its weight for oneDNN; returns how many (0 where PyTorch has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype in PACKABLE_DTYPES:
            module.__class__ = PackedLinear
            module.packed_weight()
            count += 1
    return count


def unpack(model: nn.Module) -> None:
    """Make model's PackedLinear layers plain nn.Linear again and free their packed copies."""
    for module in model.modules():
        if type(module) is PackedLinear:
            module.__dict__.pop("_packed", None)
            module.__class__ = nn.Linear


def is_prepacked(model: nn.Module) -> bool:
    """Whether any layer of model is a PackedLinear."""
    return any(type(module) is PackedLinear for module in model.modules())
