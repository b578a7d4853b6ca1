"""OPT (Zhang et al. 2022): learned positions offset by 2, ReLU, pre-LN (post-LN in 350m), optional project_in/out."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, reject, special_tokens
from llmlab.model.hf.weights import Rule, weight_and_bias

# OPTLearnedPositionalEmbedding keeps fairseq's padding_idx offset: position p reads row p + 2.
POSITION_OFFSET = 2


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from an OPTConfig dict."""
    reject(hf, layer_norm_elementwise_affine=True)
    width = hf["hidden_size"]
    projected = pick(hf, "word_embed_proj_dim", default=width)
    pre_norm = bool(hf.get("do_layer_norm_before", True))
    bias = bool(hf.get("enable_bias", True))
    return ModelConfig(
        family="opt", arch="decoder", vocab_size=hf["vocab_size"], d_model=width, n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["ffn_dim"],
        max_seq_len=pick(hf, "max_position_embeddings", default=2048), norm="layernorm", norm_eps=1e-5,
        norm_placement="pre" if pre_norm else "post",
        final_norm=pre_norm and not hf.get("_remove_final_layer_norm", False), position="learned",
        position_offset=POSITION_OFFSET, qkv_bias=bias, out_bias=bias, mlp=mlp_kind(hf, default="relu"), mlp_bias=bias,
        embed_proj_dim=projected if projected != width else None,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), dropout=float(pick(hf, "dropout", default=0.1)),
        init_std=pick(hf, "init_std", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """An OPTConfig dict for an OPT-family ModelConfig."""
    if config.norm_placement == "post" and config.final_norm:
        raise ConfigError("OPT has no final layer norm after post-LN blocks; set ModelConfig.final_norm to False.")
    return {
        "model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "ffn_dim": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "max_position_embeddings": config.max_seq_len,
        "word_embed_proj_dim": config.embed_proj_dim or config.d_model,
        "do_layer_norm_before": config.norm_placement == "pre",
        "_remove_final_layer_norm": config.norm_placement == "pre" and not config.final_norm,
        "enable_bias": config.qkv_bias, "activation_function": hf_activation(config), "dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "init_std": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for OPT."""
    top = "model.decoder."
    rules = [Rule("embed.tokens.weight", top + "embed_tokens.weight"),
             Rule("embed.positions.weight", top + "embed_positions.weight")]
    if config.embed_proj_dim and config.embed_proj_dim != config.d_model:
        rules += [Rule("embed.proj_in.weight", top + "project_in.weight"),
                  Rule("proj_out.weight", top + "project_out.weight")]
    if config.final_norm:
        rules += weight_and_bias("decoder.norm", top + "final_layer_norm")
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"{top}layers.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + "self_attn_layer_norm")
        rules += weight_and_bias(ours + "mlp_norm", theirs + "final_layer_norm")
        for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            rules += weight_and_bias(f"{ours}attn.{a}", f"{theirs}self_attn.{b}", bias=config.qkv_bias)
        rules += weight_and_bias(ours + "mlp.up", theirs + "fc1", bias=config.mlp_bias)
        rules += weight_and_bias(ours + "mlp.down", theirs + "fc2", bias=config.mlp_bias)
    return rules


FAMILIES = (Family(("opt",), config_from_hf, config_to_hf, weight_rules, ignore=(r"lm_head\.weight$",),
                   base_prefix="model."),)
