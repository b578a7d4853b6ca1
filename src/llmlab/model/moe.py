"""Mixture of experts (survey §4.2.2): Switch top-1 and top-k routing, capacity with token dropping, jitter,
load-balancing and router z losses."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmlab.model.config import ModelConfig
from llmlab.model.mlp import MLP


class MoE(nn.Module):
    """A router that sends each token to its top-k experts; tokens over an expert's capacity are dropped (output 0)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.d_model, config.n_experts, bias=config.moe_router_bias)
        self.experts = nn.ModuleList(MLP(config) for _ in range(config.n_experts))

    def capacity(self, tokens_per_sequence: int) -> int | None:
        """How many tokens of one sequence each expert may take, or None for no limit."""
        if self.config.expert_capacity is not None:
            return self.config.expert_capacity
        if self.config.capacity_factor is not None:
            share = tokens_per_sequence * self.config.moe_top_k / self.config.n_experts
            return max(1, math.ceil(self.config.capacity_factor * share))
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed expert outputs [batch, seq, d_model] and the weighted auxiliary loss (a scalar)."""
        cfg = self.config
        batch, seq, dim = x.shape
        routed = x.float()
        if self.training and cfg.router_jitter > 0:
            routed = routed * torch.empty_like(routed).uniform_(1.0 - cfg.router_jitter, 1.0 + cfg.router_jitter)
        logits = nn.functional.linear(routed, self.router.weight.float(), None if self.router.bias is None
                                      else self.router.bias.float())
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(cfg.moe_top_k, dim=-1)
        if cfg.moe_normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        assignment = nn.functional.one_hot(experts, cfg.n_experts)
        capacity = self.capacity(seq)
        if capacity is not None:
            priority = assignment.flatten(1, 2).cumsum(dim=1).view_as(assignment)
            assignment = assignment * (priority <= capacity)
        flat_x = x.reshape(-1, dim)
        gate = (assignment * weights[..., None]).sum(dim=2).reshape(-1, cfg.n_experts)
        out = torch.zeros_like(flat_x)
        for index, expert in enumerate(self.experts):
            tokens = gate[:, index].nonzero().squeeze(-1)
            if tokens.numel():
                contribution = expert(flat_x[tokens]) * gate[tokens, index, None].to(x.dtype)
                out.index_add_(0, tokens, contribution)
        return out.view(batch, seq, dim), self.auxiliary_loss(logits, probs, experts)

    def auxiliary_loss(self, logits: torch.Tensor, probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Switch load balancing (Fedus et al. 2021, eq. 4) and ST-MoE router z-loss (Zoph et al. 2022), weighted."""
        cfg = self.config
        loss = logits.new_zeros(())
        if cfg.router_aux_loss_coef:
            counts = nn.functional.one_hot(experts, cfg.n_experts).float().sum(dim=2)
            fraction = counts.mean(dim=(0, 1)) / cfg.moe_top_k
            balance = cfg.n_experts * (fraction * probs.mean(dim=(0, 1))).sum()
            loss = loss + cfg.router_aux_loss_coef * balance
        if cfg.router_z_loss_coef:
            loss = loss + cfg.router_z_loss_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return loss
