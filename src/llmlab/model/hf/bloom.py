"""BLOOM (BigScience 2022): ALiBi, LayerNorm after the embedding, fused per-head QKV, GELU (tanh), tied head."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_tokens, pick, reject, special_tokens
from llmlab.model.hf.weights import Rule, qkv_from_interleaved, qkv_to_interleaved, weight_and_bias


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a BloomConfig dict (pretraining_tp/slow_but_exact only change float summation order)."""
    reject(hf, apply_residual_connection_post_layernorm=False)
    width = pick(hf, "hidden_size", "n_embed")
    return ModelConfig(
        family="bloom", arch="decoder", vocab_size=hf["vocab_size"], d_model=width,
        n_layers=pick(hf, "n_layer", "num_hidden_layers"), n_heads=pick(hf, "n_head", "num_attention_heads"),
        d_ff=4 * width, max_seq_len=pick(hf, "seq_length", default=2048), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), embedding_norm=True, position="alibi", fused_qkv=True,
        mlp="gelu_tanh", tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=float(pick(hf, "hidden_dropout", default=0.0)), init_std=pick(hf, "initializer_range", default=0.02),
        **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A BloomConfig dict for a BLOOM-family ModelConfig."""
    if config.d_ff != 4 * config.d_model:
        raise ConfigError(f"BLOOM's MLP is 4 × d_model wide, but ModelConfig.d_ff is {config.d_ff}.")
    return {
        "model_type": "bloom", "architectures": ["BloomForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "n_layer": config.n_layers, "n_head": config.n_heads,
        "layer_norm_epsilon": config.norm_eps, "seq_length": config.max_seq_len,
        "apply_residual_connection_post_layernorm": False, "hidden_dropout": config.dropout,
        "attention_dropout": config.dropout, "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for BLOOM; query_key_value is interleaved per head as [heads, 3, head_dim]."""
    rules = [Rule("embed.tokens.weight", "transformer.word_embeddings.weight"),
             *weight_and_bias("embed.norm", "transformer.word_embeddings_layernorm"),
             *weight_and_bias("decoder.norm", "transformer.ln_f")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"transformer.h.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + "input_layernorm")
        rules += weight_and_bias(ours + "mlp_norm", theirs + "post_attention_layernorm")
        rules += [Rule(ours + f"attn.qkv.{kind}", theirs + f"self_attention.query_key_value.{kind}",
                       qkv_from_interleaved, qkv_to_interleaved) for kind in ("weight", "bias")]
        rules += weight_and_bias(ours + "attn.o", theirs + "self_attention.dense")
        rules += weight_and_bias(ours + "mlp.up", theirs + "mlp.dense_h_to_4h")
        rules += weight_and_bias(ours + "mlp.down", theirs + "mlp.dense_4h_to_h")
    return rules


FAMILIES = (Family(("bloom",), config_from_hf, config_to_hf, weight_rules, ignore=(r"lm_head\.weight$",),
                   base_prefix="transformer."),)
