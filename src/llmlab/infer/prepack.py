"""Linear weights prepacked for inference on the CPU.

On the CPU, ``F.linear`` hands a forward call's rows to MKL's GEMM over the row-major weight, which at the few rows of
a decode step runs far below both the machine's FLOPs and its memory bandwidth. ``prepack(model)`` turns every plain
``nn.Linear`` of a CPU model into a :class:`PackedLinear`, which keeps a copy of its weight in a layout made for a
faster kernel, uses it whenever no gradient is needed, and packs it again after the weight has changed (an optimizer
step, ``load_state_dict``); with a gradient it is ``F.linear`` as before. The copies take as much memory as the linear
weights themselves; ``unpack(model)`` frees them.

- float32: llmlab's own kernel (kernels/blocked_linear.cpp, built for the machine on first use by llmlab.infer.native)
  over the weight in blocks of 16 output features, which it streams from memory once, in order, at any number of
  rows. At one row it reads GPT-2 124M's linears at about 89% of torch.sum's bandwidth, where oneDNN reaches 72% and
  F.linear a third, and greedy decoding runs 1.2× faster than through oneDNN; at 16–256 rows it is 0.85–1.14×
  oneDNN (benchmarks/bench_prepack.py, docs/benchmarks.md).
- bfloat16, and float32 where that kernel cannot be built (no C++ compiler; LLMLAB_NATIVE=0): oneDNN's inner product
  over a copy reordered into its own blocked layout, 1.6–2.9× faster than F.linear at 1–256 rows.

The native kernel's copies lie on transparent huge pages where Linux gives them (huge_page_empty), which read about a
tenth faster than 4 KiB pages. A model prepacked for it also attends through the native backend
(llmlab.infer.decode_attention) and, on the ragged cache, runs each decode step in one native call
(llmlab.infer.native_step).

    prepack(model)        # serving or generating on the CPU
    generate(model, prompts, config)
"""

from __future__ import annotations

import math
import mmap

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import ConfigError
from llmlab.infer import decode_attention, native

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
BLOCK = 16  # output features per block of the native kernel's layout (one vector of float32)


def blocked(weight: torch.Tensor) -> torch.Tensor:
    """weight [out, in] as blocks of BLOCK output features, [ceil(out / BLOCK), in, BLOCK], the last zero-padded, in
    memory on huge pages where the system gives them (huge_page_empty)."""
    out, features = weight.shape
    padded = torch.zeros(-(-out // BLOCK) * BLOCK, features, dtype=weight.dtype)
    padded[:out] = weight.detach()
    packed = huge_page_empty((padded.shape[0] // BLOCK, features, BLOCK), weight.dtype)
    return packed.copy_(padded.view(-1, BLOCK, features).transpose(1, 2))


HUGE_PAGE = 2 << 20  # bytes of an x86-64 or arm64 transparent huge page


def huge_page_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor which, from 2 MiB on and on Linux, lies in an anonymous mapping advised into
    transparent huge pages (madvise): a matrix streamed at every decode step then costs a TLB miss per 2 MiB, not per
    4 KiB, and reads about a tenth faster. Elsewhere, or where the system has huge pages off, torch.empty's memory."""
    numel = math.prod(shape)
    size = numel * torch.empty((), dtype=dtype).element_size()
    if size < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    mapping = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping for as long as the tensor lives
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start:start + size].view(dtype).view(shape)


def uses_native_kernel(dtype: torch.dtype) -> bool:
    """Whether PackedLinear multiplies weights of dtype through llmlab's native kernel (else through oneDNN)."""
    return dtype == torch.float32 and native.load("blocked_linear")


KERNELS = ("auto", "native", "onednn")  # auto: native for float32 where it builds, else oneDNN


class _Packed:
    """A PackedLinear's packed copy, the weight's (data pointer, version) it was packed from, and whether it is for
    the native kernel. A copy or a pickle of the module gets an empty one for the same kernel, packed again on first
    use (a oneDNN tensor has no storage that copy.deepcopy or torch.save could read)."""

    __slots__ = ("key", "tensor", "native")

    def __init__(self, native: bool = False):
        self.key, self.tensor, self.native = None, None, native

    def __deepcopy__(self, memo) -> "_Packed":
        return _Packed(self.native)

    def __reduce__(self):
        return _Packed, (self.native,)


class PackedLinear(nn.Linear):
    """An nn.Linear that, where autograd is not needed, multiplies by a blocked copy of its weight."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T + bias: through the packed copy without autograd, else F.linear."""
        parameters = self._parameters  # not nn.Module.__getattr__: a decode step makes dozens of these calls
        weight, bias = parameters["weight"], parameters["bias"]
        if (input.dtype != weight.dtype or input.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))):
            return F.linear(input, weight, bias)
        # a compiled step cannot read data pointers; the eager prefill before it has packed the weight
        packed = self.__dict__["_packed"].tensor if torch.compiler.is_compiling() else self.packed_weight()
        if packed.is_mkldnn:
            return torch.ops.mkldnn._linear_pointwise(input, packed, bias, "none", [], "")
        return torch.ops.llmlab.blocked_linear(input, packed, bias, self.out_features)

    def packed_weight(self) -> torch.Tensor:
        """The weight in the packed layout its kernel reads (native blocks, else oneDNN's), packed again if the
        weight changed since it was last packed."""
        weight = self._parameters["weight"]
        key = (weight.data_ptr(), weight._version)
        packed = self.__dict__.get("_packed")
        if packed is None:
            packed = self.__dict__["_packed"] = _Packed(uses_native_kernel(weight.dtype))
        if packed.key != key:
            if packed.native and not native.load("blocked_linear"):  # e.g. unpickled where it cannot be built
                packed.native = False
            packed.key = key
            packed.tensor = (blocked(weight) if packed.native
                             else torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        return packed.tensor


def prepack(model: nn.Module, kernel: str = "auto") -> int:
    """Make every plain nn.Linear of model whose weight is float32 or bfloat16 on the CPU a PackedLinear, in place,
    and pack its weight for kernel ("auto": the native kernel for float32 where it builds, else oneDNN; "onednn";
    "native", float32 only); returns how many layers (none that the chosen kernel cannot take). Where layers use the
    native kernel and the model attends through sdpa, its decode steps then attend through the native backend
    (llmlab.infer.decode_attention)."""
    if kernel not in KERNELS:
        raise ConfigError(f"prepack's kernel must be one of {', '.join(KERNELS)}, not {kernel!r}.")
    if kernel == "native" and not native.load("blocked_linear"):
        raise ConfigError(f"llmlab's native kernel is not available here: "
                          f"{native.unavailable_reason('blocked_linear')}.")
    count = native_layers = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.device.type == "cpu":
            use_native = _native_for(module.weight.dtype, kernel)
            if use_native is not None:
                module.__class__ = PackedLinear
                module.__dict__["_packed"] = _Packed(use_native)
                module.packed_weight()
                count += 1
                native_layers += use_native
    if native_layers and getattr(model, "attention_backend", None) == "sdpa" and decode_attention.available():
        model.set_attention_backend(decode_attention.BACKEND.name)
    _forget_native_step(model)
    return count


def _native_for(dtype: torch.dtype, kernel: str) -> bool | None:
    """Whether prepack's kernel choice packs weights of dtype for the native kernel (True) or oneDNN (False); None
    where the chosen kernel cannot take them."""
    if dtype not in PACKABLE_DTYPES:
        return None
    if kernel == "native" or (kernel == "auto" and uses_native_kernel(dtype)):
        return True if dtype == torch.float32 else None
    return False if torch.backends.mkldnn.is_available() else None


def unpack(model: nn.Module) -> None:
    """Make model's PackedLinear layers plain nn.Linear again and free their packed copies (and attend through the
    dense backend again where prepack chose the native one)."""
    for module in model.modules():
        if type(module) is PackedLinear:
            module.__dict__.pop("_packed", None)
            module.__class__ = nn.Linear
    if getattr(model, "attention_backend", None) == decode_attention.BACKEND.name:
        model.set_attention_backend("sdpa")
    _forget_native_step(model)


def _forget_native_step(model: nn.Module) -> None:
    """llmlab.infer.native_step lowers the model again, packed as it is now (imported here: it imports this module)."""
    from llmlab.infer import native_step
    native_step.forget(model)


def is_prepacked(model: nn.Module) -> bool:
    """Whether any layer of model is a PackedLinear."""
    return any(type(module) is PackedLinear for module in model.modules())
