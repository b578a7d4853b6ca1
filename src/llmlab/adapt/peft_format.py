"""PEFT's on-disk LoRA format for llmlab modules: each adapted module's Hugging Face name in the base's family and
how its LoRA tensors move there, derived from the family's weight rules (no per-family code).

A weight stored in the checkpoint is ours with rows and columns permuted (fused q/k/v interleaved per head group in
NeoX, BLOOM and Falcon), and perhaps transposed (GPT-2's Conv1D, PEFT's fan_in_fan_out). Since delta = B @ A, lora_B
and DoRA's magnitude move like the weight's rows, lora_A like its columns; a transposed weight keeps A and B as they
are. Every family's rules map one llmlab tensor onto one Hugging Face tensor, so each adapted module has exactly one
PEFT counterpart with its own lora_A. A base with no Hugging Face form (family "custom", or a layout its family's
checkpoints cannot hold, e.g. a fused qkv under the llama family) keeps llmlab's module names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmlab.errors import ConfigError
from llmlab.model.attention import Attention
from llmlab.model.hf import families
from llmlab.model.mlp import MLP

PREFIX = "base_model.model."  # PeftModel's path to the wrapped transformers model
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
KINDS = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")  # PEFT's key suffixes per module


@dataclass(frozen=True)
class Layout:
    """Where one llmlab module's weight sits in the checkpoint: row i there is our row rows[i], column j our cols[j]."""

    name: str
    rows: torch.Tensor
    cols: torch.Tensor
    transposed: bool = False  # stored [in, out] (PEFT's fan_in_fan_out)

    def store(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        """Our lora_A [r, in], lora_B [out, r] or magnitude [out] as the checkpoint holds it."""
        moved = tensor[:, self.cols] if kind == "lora_A.weight" else tensor[self.rows]
        return moved.contiguous()

    def restore(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        """The inverse of store: a checkpoint's tensor in our module's layout."""
        if kind == "lora_A.weight":
            return tensor[:, self.cols.argsort()].contiguous()
        return tensor[self.rows.argsort()].contiguous()


def adaptable(model: nn.Module) -> dict[str, nn.Module]:
    """The linear layers LoRA may adapt, by name: the projections of every attention and MLP sublayer (experts too)."""
    found = {}
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (Attention, MLP)):
            for name, child in parent.named_children():
                base = child.get_base_layer() if hasattr(child, "get_base_layer") else child  # under a LoRA wrapper
                if isinstance(base, nn.Linear):
                    found[f"{parent_name}.{name}"] = child
    return found


def hugging_face_names(model: nn.Module) -> dict[str, str] | None:
    """Every adaptable layer's module name in the Hugging Face checkpoint of the base's family, or None when the
    family has none or its checkpoints cannot hold every one of these layers (then llmlab's names are used)."""
    family = families().get(model.config.family)
    if family is None:
        return None
    rules = {rule.ours: rule.theirs for rule in family.weight_rules(model.config)}
    names = {name: rules.get(f"{name}.weight", "") for name in adaptable(model)}
    if not all(theirs.endswith(".weight") for theirs in names.values()):
        return None
    return {name: theirs.removesuffix(".weight") for name, theirs in names.items()}


def checkpoint_modules(model: nn.Module, modules: list[str]) -> dict[str, str]:
    """Each named layer's module name in the base's checkpoint: its family's Hugging Face name, else llmlab's own."""
    names = hugging_face_names(model)
    return {name: name if names is None else names[name] for name in modules}


def layouts(model: nn.Module, modules: list[str]) -> dict[str, Layout]:
    """The checkpoint name and layout of each named adaptable layer (see checkpoint_modules)."""
    rules = {} if hugging_face_names(model) is None else {
        rule.ours: rule for rule in families()[model.config.family].weight_rules(model.config)}
    found, probed = {}, {}
    for name, theirs in checkpoint_modules(model, modules).items():
        layer = model.get_submodule(name)  # its weight may be packed (QLoRA), its feature counts are not
        out, inp = layer.out_features, layer.in_features
        transform = getattr(rules.get(f"{name}.weight"), "to_theirs", None)
        if (transform, out, inp) not in probed:  # layers of one shape share a layout; probe each kind once
            probe = torch.arange(out * inp, dtype=torch.int32 if out * inp < 2**31 else torch.int64)
            probe = probe.reshape(out, inp)
            probed[transform, out, inp] = _permutation(probe, probe if transform is None
                                                       else transform(probe, model.config))
        layout = probed[transform, out, inp]
        if layout is None:
            raise ConfigError(f"the {model.config.family} checkpoint stores {name}'s weight as more than a "
                              f"permutation of its rows and columns, so PEFT's format cannot hold its LoRA adapter.")
        found[name] = Layout(theirs, *layout)
    return found


def _permutation(probe: torch.Tensor, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """(rows, cols, transposed): the row/column permutation (and transposition) that turns probe into stored."""
    width = probe.shape[1]
    for transposed, view in ((False, stored), (True, stored.t())):
        if view.shape != probe.shape:
            continue
        rows, cols = (view[:, 0] // width).long(), (view[0, :] % width).long()
        if torch.equal(probe[rows[:, None], cols[None, :]], view):
            return rows, cols, transposed
    return None


def checkpoint_names(model: nn.Module) -> list[str]:
    """Every module name the base's checkpoint has (from its family's rules), to tell short target names apart."""
    if hugging_face_names(model) is None:
        return [name for name, _ in model.named_modules()]
    rules = families()[model.config.family].weight_rules(model.config)
    return [rule.theirs.rsplit(".", 1)[0] for rule in rules]


def target_names(adapted: list[str], everything: list[str]) -> list[str]:
    """PEFT's target_modules: the adapted modules' last names when those match nothing else, else their full names."""
    short = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    matched = {name for name in everything if name.rsplit(".", 1)[-1] in short}
    return short if matched == set(adapted) else sorted(adapted)


def task_type(config) -> str | None:
    """PEFT's task_type for the base: CAUSAL_LM, SEQ_2_SEQ_LM, or none for encoders (PeftModel's plain wrapper)."""
    return {"encoder_decoder": "SEQ_2_SEQ_LM", "encoder": None}.get(config.arch, "CAUSAL_LM")


def split_key(key: str) -> tuple[str, str] | None:
    """(module name, kind) of a PEFT adapter tensor key, or None for a key of another kind."""
    key = key.removeprefix(PREFIX)
    for kind in KINDS:
        if key.endswith("." + kind):
            return key[: -len(kind) - 1], kind
    return None
