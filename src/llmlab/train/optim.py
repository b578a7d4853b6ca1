"""Optimisers: AdamW (fused where supported) and Adafactor, with weight decay on matrices only."""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adafactor")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and undecayed norms, biases and embeddings (tied heads included)."""
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)}
    parameters = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in parameters if p.dim() >= 2 and id(p) not in embeddings]
    undecayed = [p for p in parameters if p.dim() < 2 or id(p) in embeddings]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": undecayed, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.Optimizer:
    """The named optimiser over model's parameter groups; AdamW uses the fused kernel where the device has one."""
    groups = parameter_groups(model, weight_decay)
    if name == "adafactor":
        return torch.optim.Adafactor(groups, lr=lr)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
