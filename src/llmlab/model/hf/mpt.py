"""MPT (MosaicML 2023): ALiBi, fused [q | k | v] projection, LayerNorm without bias, no biases, tied head."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_tokens, pick, reject, special_tokens
from llmlab.model.hf.weights import Rule

# transformers' MptMLP is always 4 × d_model wide, whatever expansion_ratio says.
MLP_RATIO = 4


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from an MptConfig dict; options transformers' MPT ignores are rejected, not silently dropped."""
    attn = hf.get("attn_config") or {}
    supported = {"attn_type": "multihead_attention", "clip_qkv": None, "qk_ln": False, "prefix_lm": False,
                 "attn_uses_sequence_id": False, "alibi": True, "alibi_bias_max": 8}
    reject({"model_type": "mpt", **{f"attn_config.{k}": v for k, v in attn.items()}},
           **{f"attn_config.{k}": v for k, v in supported.items()})
    reject(hf, no_bias=True, logit_scale=None, embedding_fraction=1.0)
    if hf.get("norm_type", "low_precision_layernorm") not in ("low_precision_layernorm", "layernorm"):
        raise ConfigError(f"mpt config: norm_type={hf['norm_type']!r} is not supported (only LayerNorm).")
    d_model = pick(hf, "d_model", "hidden_size")
    return ModelConfig(
        family="mpt", arch="decoder", vocab_size=hf["vocab_size"], d_model=d_model,
        n_layers=pick(hf, "n_layers", "num_hidden_layers"), n_heads=pick(hf, "n_heads", "num_attention_heads"),
        d_ff=MLP_RATIO * d_model, max_seq_len=pick(hf, "max_seq_len", default=2048), norm="layernorm",
        norm_bias=False, norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), position="alibi",
        fused_qkv=True, qkv_bias=False, out_bias=False, attn_scale=attn.get("softmax_scale"), mlp="gelu",
        mlp_bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """An MptConfig dict for an MPT-family ModelConfig."""
    if config.d_ff != MLP_RATIO * config.d_model:
        raise ConfigError(f"ModelConfig.d_ff ({config.d_ff}) must be {MLP_RATIO} × d_model ({config.d_model}) "
                          "for a transformers MPT checkpoint.")
    return {
        "model_type": "mpt", "architectures": ["MptForCausalLM"], "vocab_size": config.vocab_size,
        "d_model": config.d_model, "n_heads": config.n_heads, "n_layers": config.n_layers,
        "expansion_ratio": MLP_RATIO, "max_seq_len": config.max_seq_len, "layer_norm_epsilon": config.norm_eps,
        "no_bias": True, "learned_pos_emb": False, "norm_type": "low_precision_layernorm",
        "attn_config": {"attn_type": "multihead_attention", "alibi": True, "alibi_bias_max": 8,
                        "softmax_scale": config.attn_scale, "clip_qkv": None, "qk_ln": False, "prefix_lm": False},
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for MPT; Wqkv is already our [q | k | v] layout."""
    rules = [Rule("embed.tokens.weight", "transformer.wte.weight"),
             Rule("decoder.norm.weight", "transformer.norm_f.weight")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"transformer.blocks.{i}."
        names = [("attn_norm", "norm_1"), ("attn.qkv", "attn.Wqkv"), ("attn.o", "attn.out_proj"),
                 ("mlp_norm", "norm_2"), ("mlp.up", "ffn.up_proj"), ("mlp.down", "ffn.down_proj")]
        rules += [Rule(f"{ours}{a}.weight", f"{theirs}{b}.weight") for a, b in names]
    return rules


FAMILIES = (Family(("mpt",), config_from_hf, config_to_hf, weight_rules, ignore=(r"^lm_head\.weight$",),
                    base_prefix="transformer."),)
