"""Mixture of experts against hand-computed values: routing, capacity dropping and the Switch / ST-MoE losses."""

import math

import pytest
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.moe import MoE

LN3, LN7 = math.log(3), math.log(7)
# Router logits of four tokens over two experts (the router is the identity, so inputs are the logits):
# probabilities (1/4, 3/4), (3/4, 1/4), (1/8, 7/8), (1/4, 3/4) → chosen experts 1, 0, 1, 1.
LOGITS = torch.tensor([[[0.0, LN3], [LN3, 0.0], [0.0, LN7], [0.0, LN3]]])


def identity_router_moe(**changes) -> MoE:
    """Two experts on 2-d tokens whose router logits equal the tokens themselves."""
    settings = dict(d_model=2, d_ff=4, n_heads=1, n_experts=2, mlp="relu", mlp_bias=False,
                    router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    config = ModelConfig(**{**settings, **changes})
    torch.manual_seed(0)
    moe = MoE(config).eval()
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(2))
    return moe


def test_switch_load_balancing_and_router_z_loss_follow_the_papers():
    # Switch Transformer eq. 4: N · Σ_i f_i · P_i, with f = share of tokens sent to each expert = (1/4, 3/4) and
    # P = mean router probability = ((1/4 + 3/4 + 1/8 + 1/4) / 4, (3/4 + 1/4 + 7/8 + 3/4) / 4) = (11/32, 21/32).
    balance = 2 * (1 / 4 * 11 / 32 + 3 / 4 * 21 / 32)
    assert balance == pytest.approx(1.15625)
    # ST-MoE router z-loss: mean over tokens of (log Σ_j exp(logit_j))² = (3 · ln²4 + ln²8) / 4 = 21/4 · ln²2.
    z_loss = 21 / 4 * math.log(2) ** 2
    _, aux = identity_router_moe()(LOGITS)
    assert aux.item() == pytest.approx(0.01 * balance + 0.001 * z_loss, rel=1e-6)


def test_losses_count_the_router_choice_even_for_dropped_tokens():
    _, unlimited = identity_router_moe()(LOGITS)
    _, capped = identity_router_moe(expert_capacity=1)(LOGITS)
    assert capped.item() == pytest.approx(unlimited.item(), rel=1e-6)


def test_uniform_top2_routing_has_the_minimal_balance_loss():
    moe = identity_router_moe(moe_router="topk", moe_top_k=2, router_z_loss_coef=0.0, router_aux_loss_coef=1.0)
    _, aux = moe(LOGITS)
    assert aux.item() == pytest.approx(1.0, rel=1e-6)  # f = (1/2, 1/2), so N · Σ f_i P_i = 2 · 1/2 · Σ P_i = 1


def test_top1_output_is_probability_times_expert_and_zero_over_capacity():
    moe = identity_router_moe(expert_capacity=1)
    out, _ = moe(LOGITS)
    tokens = LOGITS[0]
    # expert 1 takes token 0 (probability 3/4) and is then full; expert 0 takes token 1 (probability 3/4)
    assert torch.allclose(out[0, 0], 0.75 * moe.experts[1](tokens[0]), atol=1e-6)
    assert torch.allclose(out[0, 1], 0.75 * moe.experts[0](tokens[1]), atol=1e-6)
    assert torch.equal(out[0, 2:], torch.zeros(2, 2))
    # capacity is counted per sequence: the same tokens as a second sequence are not dropped by the first one's load
    batched, _ = moe(torch.cat([LOGITS, LOGITS]))
    assert torch.allclose(batched[1], out[0], atol=1e-6)
