"""GPT-J (Wang and Komatsuzaki 2021): parallel attention + MLP on one shared norm, partial interleaved RoPE."""

from __future__ import annotations

import math

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, special_tokens
from llmlab.model.hf.weights import Rule, weight_and_bias


def rope_fraction_for(rotary_dim: int, head_dim: int) -> float:
    """The rope_fraction whose truncated product with head_dim gives back exactly rotary_dim."""
    fraction = rotary_dim / head_dim
    # e.g. 30 / 44 * 44 rounds to 29.999…, which int() would truncate to 29
    return fraction if int(head_dim * fraction) == rotary_dim else math.nextafter(fraction, 2.0)


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a GPTJConfig dict."""
    width, heads = hf["n_embd"], hf["n_head"]
    head_dim = width // heads
    # rotary_dim null makes transformers rotate over hidden_size channels, which only fits one head
    rotary_dim = hf.get("rotary_dim", 64) or width
    if not 0 < rotary_dim <= head_dim or rotary_dim % 2:
        raise ConfigError(
            f"gptj config: rotary_dim={hf.get('rotary_dim')!r} must be a positive even number "
            f"at most the head width {head_dim}."
        )
    return ModelConfig(
        family="gptj", arch="decoder", vocab_size=hf["vocab_size"], d_model=width, n_layers=hf["n_layer"],
        n_heads=heads, d_ff=pick(hf, "n_inner", default=4 * width), max_seq_len=pick(hf, "n_positions", default=2048),
        norm="layernorm", norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), position="rope",
        rope_fraction=rope_fraction_for(rotary_dim, head_dim), rope_layout="interleaved", qkv_bias=False,
        out_bias=False, mlp=mlp_kind(hf), parallel_residual=True, parallel_shared_norm=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), head_bias=True,
        dropout=float(pick(hf, "resid_pdrop", default=0.0)), init_std=pick(hf, "initializer_range", default=0.02),
        **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A GPTJConfig dict for a GPT-J-family ModelConfig."""
    return {
        "model_type": "gptj", "architectures": ["GPTJForCausalLM"], "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len, "n_embd": config.d_model, "n_layer": config.n_layers,
        "n_head": config.n_heads, "rotary_dim": config.rotary_dim, "n_inner": config.d_ff,
        "activation_function": hf_activation(config), "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for GPT-J (bias-free attention; the untied LM head has a bias)."""
    rules = [Rule("embed.tokens.weight", "transformer.wte.weight"),
             *weight_and_bias("decoder.norm", "transformer.ln_f"), Rule("head.bias", "lm_head.bias")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"transformer.h.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + "ln_1")
        for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            rules += weight_and_bias(f"{ours}attn.{a}", f"{theirs}attn.{b}", bias=False)
        rules += weight_and_bias(ours + "mlp.up", theirs + "mlp.fc_in")
        rules += weight_and_bias(ours + "mlp.down", theirs + "mlp.fc_out")
    return rules


FAMILIES = (Family(("gptj",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"), base_prefix="transformer."),)
