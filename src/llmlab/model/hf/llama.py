"""LLaMA (Touvron et al. 2023): RMSNorm, SwiGLU, RoPE, grouped-query attention."""

from __future__ import annotations

from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_tokens, pick, reject, rope_settings, special_tokens
from llmlab.model.hf.weights import Rule


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a LlamaConfig dict."""
    reject(hf, hidden_act="silu", pretraining_tp=1)
    heads = hf["num_attention_heads"]
    return ModelConfig(
        family="llama", arch="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=heads, n_kv_heads=pick(hf, "num_key_value_heads", default=heads),
        head_dim=pick(hf, "head_dim", default=hf["hidden_size"] // heads), d_ff=hf["intermediate_size"],
        max_seq_len=pick(hf, "max_position_embeddings", default=2048), norm="rmsnorm",
        norm_eps=pick(hf, "rms_norm_eps", default=1e-6), position="rope", **rope_settings(hf), mlp="swiglu",
        qkv_bias=bool(hf.get("attention_bias", False)), out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A LlamaConfig dict for a LLaMA-family ModelConfig."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.kv_heads, "head_dim": config.dim_head,
        "hidden_act": "silu", "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": config.qkv_bias, "mlp_bias": config.mlp_bias,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for LLaMA."""
    rules = [Rule("embed.tokens.weight", "model.embed_tokens.weight"), Rule("decoder.norm.weight", "model.norm.weight")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"model.layers.{i}."
        names = [("attn_norm.weight", "input_layernorm.weight"), ("mlp_norm.weight", "post_attention_layernorm.weight"),
                 ("attn.q.weight", "self_attn.q_proj.weight"), ("attn.k.weight", "self_attn.k_proj.weight"),
                 ("attn.v.weight", "self_attn.v_proj.weight"), ("attn.o.weight", "self_attn.o_proj.weight"),
                 ("mlp.gate.weight", "mlp.gate_proj.weight"), ("mlp.up.weight", "mlp.up_proj.weight"),
                 ("mlp.down.weight", "mlp.down_proj.weight")]
        if config.qkv_bias:
            names += [(f"attn.{p}.bias", f"self_attn.{p}_proj.bias") for p in "qkvo"]
        if config.mlp_bias:
            names += [(f"mlp.{p}.bias", f"mlp.{p}_proj.bias") for p in ("gate", "up", "down")]
        rules += [Rule(ours + a, theirs + b) for a, b in names]
    return rules


FAMILIES = (Family(("llama",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"), base_prefix="model."),)
