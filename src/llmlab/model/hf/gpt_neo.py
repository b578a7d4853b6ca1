"""GPT-Neo (Black et al. 2021): GPT-2-like, alternating global and local (sliding-window) attention, no scaling."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, special_tokens
from llmlab.model.hf.gpt2 import gpt2_layout_rules
from llmlab.model.hf.weights import Rule, weight_and_bias


def layer_kinds_from_hf(hf: dict) -> tuple[str, ...]:
    """Each layer's attention kind from attention_types [[pattern, repeats], ...] expanded as GPTNeoConfig does."""
    kinds = tuple(kind for pattern, repeats in pick(hf, "attention_types", default=[[["global", "local"], 12]])
                  for _ in range(repeats) for kind in pattern)
    if len(kinds) != hf["num_layers"]:
        raise ConfigError(
            f"gpt_neo config: attention_types lists {len(kinds)} layers but num_layers is {hf['num_layers']}."
        )
    return kinds


def attention_types_to_hf(config: ModelConfig) -> list:
    """attention_types as the shortest repeating pattern of the layers' kinds, e.g. [[["global", "local"], 12]]."""
    kinds = [config.layer_kind(i) for i in range(config.n_layers)]
    period = next(p for p in range(1, len(kinds) + 1)
                  if len(kinds) % p == 0 and kinds == kinds[:p] * (len(kinds) // p))
    return [[kinds[:period], len(kinds) // period]]


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a GPTNeoConfig dict."""
    width = hf["hidden_size"]
    return ModelConfig(
        family="gpt_neo", arch="decoder", vocab_size=hf["vocab_size"], d_model=width, n_layers=hf["num_layers"],
        n_heads=hf["num_heads"], d_ff=pick(hf, "intermediate_size", default=4 * width),
        max_seq_len=pick(hf, "max_position_embeddings", default=2048), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), position="learned",
        qkv_bias=False, out_bias=True, attn_scale=1.0, attn_window=pick(hf, "window_size", default=256),
        layer_kinds=layer_kinds_from_hf(hf), mlp=mlp_kind(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=float(pick(hf, "resid_dropout", default=0.0)), init_std=pick(hf, "initializer_range", default=0.02),
        **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A GPTNeoConfig dict for a GPT-Neo-family ModelConfig."""
    return {
        "model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"], "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len, "hidden_size": config.d_model,
        "num_layers": config.n_layers, "num_heads": config.n_heads, "intermediate_size": config.d_ff,
        "attention_types": attention_types_to_hf(config), "window_size": config.attn_window or 256,
        "activation_function": hf_activation(config), "layer_norm_epsilon": config.norm_eps,
        "resid_dropout": config.dropout, "embed_dropout": config.dropout, "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for GPT-Neo (GPT-2's layout with plain Linear layers; q/k/v without bias)."""
    def block_rules(ours: str, theirs: str) -> list[Rule]:
        rules = [rule for p in "qkv"
                 for rule in weight_and_bias(f"{ours}attn.{p}", f"{theirs}attn.attention.{p}_proj", bias=False)]
        rules += weight_and_bias(ours + "attn.o", theirs + "attn.attention.out_proj")
        rules += weight_and_bias(ours + "mlp.up", theirs + "mlp.c_fc")
        return rules + weight_and_bias(ours + "mlp.down", theirs + "mlp.c_proj")
    return gpt2_layout_rules(config, block_rules)


FAMILIES = (Family(("gpt_neo",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"\.attn\.attention\.(masked_)?bias$", r"^lm_head\.weight$"), base_prefix="transformer."),)
