"""GPT-2 (Radford et al. 2019): pre-LN, learned positions, fused QKV in Conv1D layers, GELU (tanh), tied head."""

from __future__ import annotations

from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, reject, special_tokens
from llmlab.model.hf.weights import Rule, transpose, weight_and_bias


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a GPT2Config dict."""
    reject(hf, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, add_cross_attention=False)
    width = hf["n_embd"]
    return ModelConfig(
        family="gpt2", arch="decoder", vocab_size=hf["vocab_size"], d_model=width, n_layers=hf["n_layer"],
        n_heads=hf["n_head"], d_ff=pick(hf, "n_inner", default=4 * width),
        max_seq_len=pick(hf, "n_positions", default=1024), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_epsilon", default=1e-5), position="learned", fused_qkv=True,
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0, mlp=mlp_kind(hf),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), dropout=float(pick(hf, "resid_pdrop", default=0.1)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def config_to_hf(config: ModelConfig) -> dict:
    """A GPT2Config dict for a GPT-2-family ModelConfig."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len, "n_embd": config.d_model, "n_layer": config.n_layers,
        "n_head": config.n_heads, "n_inner": config.d_ff, "activation_function": hf_activation(config),
        "layer_norm_epsilon": config.norm_eps, "scale_attn_weights": config.attn_scale is None,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std, **hf_tokens(config),
    }


def gpt2_layout_rules(config: ModelConfig, block_rules) -> list[Rule]:
    """GPT-2's layout (GPT-Neo's too): wte, wpe, ln_f, lm_head; per block ln_1, ln_2 and block_rules(ours, theirs)."""
    rules = [Rule("embed.tokens.weight", "transformer.wte.weight"),
             Rule("embed.positions.weight", "transformer.wpe.weight"),
             *weight_and_bias("decoder.norm", "transformer.ln_f")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
    for i in range(config.n_layers):
        ours, theirs = f"decoder.blocks.{i}.", f"transformer.h.{i}."
        rules += weight_and_bias(ours + "attn_norm", theirs + "ln_1")
        rules += weight_and_bias(ours + "mlp_norm", theirs + "ln_2")
        rules += block_rules(ours, theirs)
    return rules


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for GPT-2; its Conv1D layers store weights as [in, out], hence the transposes."""
    def block_rules(ours: str, theirs: str) -> list[Rule]:
        pairs = (("attn.qkv", "attn.c_attn"), ("attn.o", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                 ("mlp.down", "mlp.c_proj"))
        return [rule for a, b in pairs
                for rule in weight_and_bias(ours + a, theirs + b, to_ours=transpose, to_theirs=transpose)]
    return gpt2_layout_rules(config, block_rules)


FAMILIES = (Family(("gpt2",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"), base_prefix="transformer."),)
