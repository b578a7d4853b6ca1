"""Falcon (Almazrouei et al. 2023): RoPE, multi-query (7B) or grouped-query (40B) attention, parallel residual."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, reject, rope_settings, special_tokens
from llmlab.model.hf.weights import Rule, qkv_from_interleaved, qkv_to_interleaved, weight_and_bias


def _attention_layout(hf: dict, heads: int) -> tuple[int, bool, bool]:
    """(kv heads, parallel residual, shared parallel norm) of the three Falcon decoder layouts transformers builds."""
    new_architecture = bool(hf.get("new_decoder_architecture", False))
    parallel = bool(pick(hf, "parallel_attn", default=True))
    norms_in_parallel = hf.get("num_ln_in_parallel_attn")
    if new_architecture:
        if not parallel:
            raise ConfigError("falcon config: new_decoder_architecture needs parallel_attn=True in transformers.")
        kv_heads = pick(hf, "num_kv_heads", default=heads)
        return kv_heads, True, norms_in_parallel == 1
    if parallel and norms_in_parallel not in (None, 1):
        raise ConfigError("falcon config: num_ln_in_parallel_attn=2 needs new_decoder_architecture=True.")
    if pick(hf, "multi_query", default=True):
        return 1, parallel, True
    if pick(hf, "num_kv_heads", default=heads) != heads:
        raise ConfigError("falcon config: num_kv_heads differs from num_attention_heads without multi_query "
                          "or new_decoder_architecture.")
    return heads, parallel, True


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a FalconConfig dict (7B multi-query, 40B new decoder architecture, or plain multi-head)."""
    if hf.get("alibi"):
        raise ConfigError("falcon config: alibi=True is not supported (transformers rounds Falcon's ALiBi bias "
                          "to bfloat16, which llmlab does not reproduce).")
    reject(hf, apply_residual_connection_post_layernorm=False)
    d_model, heads = pick(hf, "hidden_size", "n_embed"), hf["num_attention_heads"]
    kv_heads, parallel, shared_norm = _attention_layout(hf, heads)
    bias = bool(hf.get("bias", False))
    return ModelConfig(
        family="falcon", arch="decoder", vocab_size=hf["vocab_size"], d_model=d_model,
        n_layers=hf["num_hidden_layers"], n_heads=heads, n_kv_heads=kv_heads,
        d_ff=pick(hf, "ffn_hidden_size", default=4 * d_model),
        max_seq_len=pick(hf, "max_position_embeddings", default=2048), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), position="rope", rope_layout="half", **rope_settings(hf),
        fused_qkv=True, qkv_bias=bias, out_bias=bias, mlp=mlp_kind(hf, "activation", default="gelu"), mlp_bias=bias,
        parallel_residual=parallel, parallel_shared_norm=shared_norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A FalconConfig dict; the old layout where it fits (multi-query or multi-head), else the new decoder one."""
    heads, kv_heads = config.n_heads, config.kv_heads
    if not config.qkv_bias == config.out_bias == config.mlp_bias:
        raise ConfigError("ModelConfig.qkv_bias, out_bias and mlp_bias must agree for a Falcon checkpoint "
                          "(it has one bias flag).")
    old_layout = kv_heads in (1, heads) and (config.parallel_shared_norm or not config.parallel_residual)
    if not old_layout and not config.parallel_residual:
        raise ConfigError(f"ModelConfig.n_kv_heads ({kv_heads}) between 1 and n_heads needs parallel_residual "
                          "for a Falcon checkpoint (new_decoder_architecture).")
    layout = ({"new_decoder_architecture": False, "multi_query": kv_heads == 1,
               "parallel_attn": config.parallel_residual} if old_layout else
              {"new_decoder_architecture": True, "multi_query": True, "parallel_attn": True,
               "num_ln_in_parallel_attn": 1 if config.parallel_shared_norm else 2})
    return {
        "model_type": "falcon", "architectures": ["FalconForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "ffn_hidden_size": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": heads, "num_kv_heads": kv_heads, **layout, "alibi": False,
        "bias": config.qkv_bias, "activation": hf_activation(config), "max_position_embeddings": config.max_seq_len,
        "layer_norm_epsilon": config.norm_eps, "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def _norm_names(config: ModelConfig) -> tuple[str, str | None]:
    """HF names of the attention and MLP layer norms (None when the MLP shares the attention's)."""
    if not config.parallel_residual:
        return "input_layernorm", "post_attention_layernorm"
    return ("input_layernorm", None) if config.parallel_shared_norm else ("ln_attn", "ln_mlp")


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for Falcon; query_key_value is laid out per kv group as [q heads..., k, v]."""
    rules = [Rule("embed.tokens.weight", "transformer.word_embeddings.weight"),
             *weight_and_bias("decoder.norm", "transformer.ln_f")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    attn_norm, mlp_norm = _norm_names(config)
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"transformer.h.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + attn_norm)
        if mlp_norm is not None:
            rules += weight_and_bias(ours + "mlp_norm", theirs + mlp_norm)
        qkv = weight_and_bias(ours + "attn.qkv", theirs + "self_attention.query_key_value", config.qkv_bias)
        rules += [Rule(rule.ours, rule.theirs, qkv_from_interleaved, qkv_to_interleaved) for rule in qkv]
        rules += weight_and_bias(ours + "attn.o", theirs + "self_attention.dense", config.out_bias)
        rules += weight_and_bias(ours + "mlp.up", theirs + "mlp.dense_h_to_4h", config.mlp_bias)
        rules += weight_and_bias(ours + "mlp.down", theirs + "mlp.dense_4h_to_h", config.mlp_bias)
    return rules


FAMILIES = (Family(("falcon",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"), base_prefix="transformer."),)
