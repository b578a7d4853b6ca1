"""Linear weights prepacked for oneDNN, for inference on the CPU.

On the CPU, ``F.linear`` hands a forward call's rows to MKL's GEMM over the row-major weight, which at the few rows of
a decode step runs far below both the machine's FLOPs and its memory bandwidth. Two layouts do better on this
project's machine (docs/benchmarks.md): oneDNN's inner product over a copy of the weight reordered once into its
blocked layout is 1.9× faster at 8–16 rows and 1.3× at a 512-token prefill, and for a single row MKL's GEMV over the
weight stored column-major (the same values, transposed in memory) is 1.3× faster.

``prepack(model)`` turns every plain ``nn.Linear`` of a CPU model into a :class:`PackedLinear`: its weight is stored
column-major in place (same shape and values; a tied embedding shares it) and it keeps a oneDNN copy, used for calls
of more than one row whenever no gradient is needed, packed again after the weight has changed (an optimizer step,
``load_state_dict``); with a gradient, ``F.linear`` as before. The copies take as much memory as the linear weights
themselves; ``unpack(model)`` frees them and makes the weights row-major again.

    prepack(model)        # serving or generating on the CPU
    generate(model, prompts, config)
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)

# module → (the weight's data pointer and version when packed, the packed copy); kept outside the module because a
# oneDNN tensor has no storage that copy.deepcopy or torch.save could read
_packed: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


class PackedLinear(nn.Linear):
    """An nn.Linear that, where autograd is not needed, multiplies by a oneDNN-blocked copy of its weight."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T + bias: through the packed copy for several rows without autograd, else F.linear."""
        weight = self.weight
        if (input.numel() == input.shape[-1] or input.dtype != weight.dtype or input.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))):
            return F.linear(input, weight, self.bias)  # one row: a GEMV over the column-major weight
        return torch.ops.mkldnn._linear_pointwise(input, self.packed_weight(), self.bias, "none", [], "")

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, packed again if the weight changed since it was last packed."""
        key = (self.weight.data_ptr(), self.weight._version)
        entry = _packed.get(self)
        if entry is None or entry[0] != key:
            entry = key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
            _packed[self] = entry
        return entry[1]


def prepack(model: nn.Module) -> int:
    """Make every plain nn.Linear of model whose weight is float32 or bfloat16 on the CPU a PackedLinear, in place:
    its weight column-major and packed for oneDNN; returns how many (0 where PyTorch has no oneDNN)."""
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype in PACKABLE_DTYPES:
            weight = module.weight
            if weight.dim() == 2 and weight.stride() != (1, weight.shape[0]):  # a tied weight may be done already
                weight.data = weight.data.t().contiguous().t()
            module.__class__ = PackedLinear
            module.packed_weight()
            count += 1
    return count


def unpack(model: nn.Module) -> None:
    """Make model's PackedLinear layers plain nn.Linear again, their weights row-major, and free the packed copies."""
    for module in model.modules():
        if type(module) is PackedLinear:
            _packed.pop(module, None)
            module.weight.data = module.weight.data.contiguous()
            module.__class__ = nn.Linear


def is_prepacked(model: nn.Module) -> bool:
    """Whether any layer of model is a PackedLinear."""
    return any(type(module) is PackedLinear for module in model.modules())
