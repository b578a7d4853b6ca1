"""Feed-forward layers (survey §4.2.2): GELU (exact, tanh), ReLU, SiLU and the gated SwiGLU / GeGLU / ReGLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.config import ModelConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up x)), or down(act(gate x) · up x) when gated."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.act = ACTIVATIONS[config.activation]
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias) if config.is_gated else None
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.mlp_bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))
