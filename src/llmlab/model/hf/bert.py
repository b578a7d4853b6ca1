"""BERT (Devlin et al. 2019): post-LN encoder, learned absolute positions, token types, masked-LM head."""

from __future__ import annotations

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, reject, special_tokens
from llmlab.model.hf.weights import Rule

BASE_ARCHITECTURES = ("BertModel",)
# BertForPreTraining's next-sentence head (cls.seq_relationship) is not modelled; its MLM logits are.
MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")
ENCODER_PREFIX = "bert."


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a BertConfig dict; `architectures` tells a bare encoder from a masked-LM checkpoint."""
    reject(hf, position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
    architectures = hf.get("architectures") or list(BASE_ARCHITECTURES)
    unknown = [a for a in architectures if a not in BASE_ARCHITECTURES + MLM_ARCHITECTURES]
    if unknown:
        raise ConfigError(f"bert config: architecture {unknown[0]!r} is not supported "
                          f"(only {', '.join(BASE_ARCHITECTURES + MLM_ARCHITECTURES)}).")
    masked_lm = any(a in MLM_ARCHITECTURES for a in architectures)
    return ModelConfig(
        family="bert", arch="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_seq_len=pick(hf, "max_position_embeddings", default=512), norm="layernorm",
        norm_eps=pick(hf, "layer_norm_eps", default=1e-12), norm_placement="post", final_norm=False,
        embedding_norm=True, position="learned", type_vocab_size=pick(hf, "type_vocab_size", default=2),
        mlp=mlp_kind(hf, "hidden_act", default="gelu"), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        lm_head=masked_lm, head_bias=masked_lm, head_transform=masked_lm, pooler=not masked_lm,
        dropout=float(pick(hf, "hidden_dropout_prob", default=0.1)),
        init_std=pick(hf, "initializer_range", default=0.02), **special_tokens(hf),
    )


def from_checkpoint(config: ModelConfig, hf_state: dict) -> tuple[ModelConfig, dict]:
    """Whether the checkpoint has a pooler; a bare encoder's tensors lose the `bert.` prefix if they carry it."""
    if not config.lm_head and any(k.startswith(ENCODER_PREFIX) for k in hf_state):
        # A pretraining checkpoint read as BertModel: its cls.* heads are dropped, as transformers' BertModel does.
        hf_state = {k[len(ENCODER_PREFIX):]: v for k, v in hf_state.items() if k.startswith(ENCODER_PREFIX)}
    pooler = f"{_prefix(config)}pooler.dense.weight" in hf_state
    return config.replace(pooler=pooler), hf_state


def config_to_hf(config: ModelConfig) -> dict:
    """A BertConfig dict for a BERT-family ModelConfig (a pooler-less BertModel loads with a fresh pooler)."""
    if config.arch != "encoder" or config.norm_placement != "post" or config.position != "learned":
        raise ConfigError("ModelConfig has no BERT checkpoint equivalent (needs arch 'encoder', post-LN, learned "
                          "positions).")
    return {
        "model_type": "bert", "architectures": ["BertForMaskedLM" if config.lm_head else "BertModel"],
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "intermediate_size": config.d_ff, "hidden_act": hf_activation(config),
        "max_position_embeddings": config.max_seq_len, "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.norm_eps, "position_embedding_type": "absolute",
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout, **hf_tokens(config),
    }


def _prefix(config: ModelConfig) -> str:
    return ENCODER_PREFIX if config.lm_head else ""


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for BERT (BertModel without prefix, BertForMaskedLM under `bert.` and `cls.`)."""
    prefix = _prefix(config)
    names = [("embed.tokens", "embeddings.word_embeddings"), ("embed.positions", "embeddings.position_embeddings"),
             ("embed.token_types", "embeddings.token_type_embeddings")]
    pairs = [(f"{ours}.weight", f"{prefix}{theirs}.weight") for ours, theirs in names]
    modules = [("embed.norm", "embeddings.LayerNorm")]
    for i in range(config.n_layers):
        ours, theirs = f"encoder.blocks.{i}.", f"encoder.layer.{i}."
        modules += [(ours + a, theirs + b) for a, b in [
            ("attn.q", "attention.self.query"), ("attn.k", "attention.self.key"), ("attn.v", "attention.self.value"),
            ("attn.o", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
            ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense"), ("mlp_norm", "output.LayerNorm")]]
    if config.pooler:
        modules.append(("pooler", "pooler.dense"))
    pairs += [(f"{ours}.{p}", f"{prefix}{theirs}.{p}") for ours, theirs in modules for p in ("weight", "bias")]
    if config.lm_head:
        pairs += [(f"head_dense.{p}", f"cls.predictions.transform.dense.{p}") for p in ("weight", "bias")]
        pairs += [(f"head_norm.{p}", f"cls.predictions.transform.LayerNorm.{p}") for p in ("weight", "bias")]
        pairs.append(("head.bias", "cls.predictions.bias"))
        if not config.tie_embeddings:
            # Untied checkpoints keep cls.predictions.bias as an unused copy; decoder.bias (read last) is applied.
            pairs.append(("head.weight", "cls.predictions.decoder.weight"))
            return [Rule(ours, theirs) for ours, theirs in pairs] + [
                Rule("head.bias", "cls.predictions.decoder.bias", to_theirs=_copy)]
    return [Rule(ours, theirs) for ours, theirs in pairs]


def _copy(tensor, config: ModelConfig):
    return tensor.clone()


FAMILIES = (Family(("bert",), config_from_hf, config_to_hf, weight_rules,
                   ignore=(r"embeddings\.(position|token_type)_ids$", r"^cls\.predictions\.decoder\.(weight|bias)$",
                           r"^cls\.seq_relationship\."),
                   from_checkpoint=from_checkpoint),)
