"""Generic weight-name mapping between llmlab and Hugging Face state dicts; families supply the rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from llmlab.errors import CheckpointError
from llmlab.model.config import ModelConfig

Transform = Callable[[torch.Tensor, ModelConfig], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """One llmlab tensor ↔ one Hugging Face tensor, with optional conversions each way."""

    ours: str
    theirs: str
    to_ours: Transform | None = None
    to_theirs: Transform | None = None


def transpose(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Conv1D (GPT-2) ↔ Linear: swap the two axes."""
    return tensor.t().contiguous()


def qkv_from_interleaved(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Fused QKV weight/bias per head group [kv_heads, q_per_kv + 2, head_dim] (NeoX, BLOOM, Falcon) → [q | k | v]."""
    per_group, width = config.n_heads // config.kv_heads, config.dim_head
    grouped = tensor.reshape(config.kv_heads, per_group + 2, width, *tensor.shape[1:])
    blocks = (grouped[:, :per_group], grouped[:, per_group], grouped[:, per_group + 1])
    return torch.cat([block.reshape(-1, *tensor.shape[1:]) for block in blocks])


def qkv_to_interleaved(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Our fused [q | k | v] blocks → the per-head-group layout [kv_heads, q_per_kv + 2, head_dim]."""
    per_group, width, rest = config.n_heads // config.kv_heads, config.dim_head, tensor.shape[1:]
    q, k, v = tensor.split([config.n_heads * width, config.kv_heads * width, config.kv_heads * width])
    groups = (q.reshape(config.kv_heads, per_group, width, *rest), k.reshape(config.kv_heads, 1, width, *rest),
              v.reshape(config.kv_heads, 1, width, *rest))
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def weight_and_bias(ours: str, theirs: str, bias: bool = True, to_ours: Transform | None = None,
                    to_theirs: Transform | None = None) -> list[Rule]:
    """Rules for a layer's .weight (converted as given) and, when it has one, its .bias (kept as is)."""
    rules = [Rule(f"{ours}.weight", f"{theirs}.weight", to_ours, to_theirs)]
    return rules + [Rule(f"{ours}.bias", f"{theirs}.bias")] if bias else rules


def _keep(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    return tensor


def to_llmlab(rules: list[Rule], hf_state: dict[str, torch.Tensor], config: ModelConfig,
              expected: dict[str, torch.Size], ignore: tuple[str, ...] = (), where: str = "checkpoint"):
    """Rename and convert a Hugging Face state dict; missing, unexpected or misshaped tensors raise CheckpointError."""
    state, used = {}, set()
    missing = [rule.theirs for rule in rules if rule.theirs not in hf_state]
    if missing:
        raise CheckpointError(f"{where} is missing tensor(s) {_names(missing)}.")
    for rule in rules:
        state[rule.ours] = (rule.to_ours or _keep)(hf_state[rule.theirs], config)
        used.add(rule.theirs)
    unexpected = [k for k in hf_state if k not in used and not any(re.search(p, k) for p in ignore)]
    if unexpected:
        raise CheckpointError(f"{where} has unexpected tensor(s) {_names(unexpected)}.")
    check_shapes(state, expected, where)
    return state


def to_hf(rules: list[Rule], state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and convert an llmlab state dict to Hugging Face names."""
    return {rule.theirs: (rule.to_theirs or _keep)(state[rule.ours], config).contiguous() for rule in rules}


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str) -> None:
    """Raise CheckpointError naming the tensors whose shapes differ from the model's, or that it lacks or has extra."""
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{where} is missing tensor(s) {_names(missing)}.")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{where} has unexpected tensor(s) {_names(unexpected)}.")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
             for k in expected if tuple(state[k].shape) != tuple(expected[k])]
    if wrong:
        raise CheckpointError(f"{where} has misshaped tensor(s) {_names(wrong)}.")


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
