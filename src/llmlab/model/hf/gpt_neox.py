"""GPT-NeoX / Pythia (Black et al. 2022, Biderman et al. 2023): partial RoPE, fused per-head QKV, parallel residual."""

from __future__ import annotations

from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, rope_settings, special_tokens
from llmlab.model.hf.weights import Rule, qkv_from_interleaved, qkv_to_interleaved, weight_and_bias


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a GPTNeoXConfig dict."""
    heads = hf["num_attention_heads"]
    bias = bool(hf.get("attention_bias", True))
    return ModelConfig(
        family="gpt_neox", arch="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=heads, d_ff=hf["intermediate_size"],
        max_seq_len=pick(hf, "max_position_embeddings", default=2048), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_eps", default=1e-5), position="rope", rope_layout="half",
        **{"rope_fraction": 0.25, **rope_settings(hf)}, fused_qkv=True, qkv_bias=bias, out_bias=bias,
        mlp=mlp_kind(hf, "hidden_act", default="gelu"),
        parallel_residual=bool(hf.get("use_parallel_residual", True)), parallel_shared_norm=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A GPTNeoXConfig dict for a GPT-NeoX-family ModelConfig."""
    return {
        "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "hidden_act": hf_activation(config),
        "max_position_embeddings": config.max_seq_len, "layer_norm_eps": config.norm_eps,
        "rotary_pct": config.rope_fraction, "rotary_emb_base": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base,
                            "partial_rotary_factor": config.rope_fraction},
        "use_parallel_residual": config.parallel_residual, "attention_bias": config.qkv_bias,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for GPT-NeoX; query_key_value is interleaved per head as [heads, 3, head_dim]."""
    rules = [Rule("embed.tokens.weight", "gpt_neox.embed_in.weight"),
             *weight_and_bias("decoder.norm", "gpt_neox.final_layer_norm")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "embed_out.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"gpt_neox.layers.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + "input_layernorm")
        rules += weight_and_bias(ours + "mlp_norm", theirs + "post_attention_layernorm")
        rules.append(Rule(ours + "attn.qkv.weight", theirs + "attention.query_key_value.weight",
                          qkv_from_interleaved, qkv_to_interleaved))
        if config.qkv_bias:
            rules.append(Rule(ours + "attn.qkv.bias", theirs + "attention.query_key_value.bias",
                              qkv_from_interleaved, qkv_to_interleaved))
        rules += weight_and_bias(ours + "attn.o", theirs + "attention.dense", bias=config.out_bias)
        rules += weight_and_bias(ours + "mlp.up", theirs + "mlp.dense_h_to_4h")
        rules += weight_and_bias(ours + "mlp.down", theirs + "mlp.dense_4h_to_h")
    return rules


FAMILIES = (Family(("gpt_neox",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"\.attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$", r"^(embed_out|lm_head)\.weight$"),
                   base_prefix="gpt_neox."),)
