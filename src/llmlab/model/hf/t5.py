"""T5 v1.0 and v1.1 (Raffel et al. 2020), mT5, Flan-T5, UMT5 and Switch Transformers (Fedus et al. 2021).

Encoder-decoders with a shared token embedding, RMSNorm without biases, unscaled attention and T5's bucketed
relative-position bias (from the first layer, or in every layer for UMT5); Switch makes every k-th feed-forward a
top-1 mixture of experts with a per-sequence expert capacity.
"""

from __future__ import annotations

import math

import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.config import ModelConfig
from llmlab.model.hf import Family
from llmlab.model.hf.common import hf_activation, hf_tokens, mlp_kind, pick, reject, special_tokens, untie_stored_head
from llmlab.model.hf.weights import Rule

ARCHITECTURES = {
    "t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration", "umt5": "UMT5ForConditionalGeneration",
    "switch_transformers": "SwitchTransformersForConditionalGeneration",
}
GATED = {"gelu": "geglu", "gelu_tanh": "geglu_tanh", "relu": "reglu", "silu": "swiglu"}
# llmlab MLP kind → T5 feed_forward_proj; "gated-gelu" means the tanh GELU in transformers, hence gelu_python.
FEED_FORWARD_PROJ = {
    "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu",
    "geglu_tanh": "gated-gelu", "geglu": "gated-gelu_python", "reglu": "gated-relu", "swiglu": "gated-silu",
}
EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Model types whose config stores scale_decoder_outputs (transformers ≥ 5.24 for UMT5; before, UMT5 always rescaled).
SCALE_FIELD_TYPES = ("t5", "umt5")


def _feed_forward(hf: dict) -> str:
    """The MLP kind of T5's feed_forward_proj ("relu", "gated-gelu", …) or Switch's dense_act_fn."""
    if hf["model_type"] == "switch_transformers":
        return mlp_kind(hf, "dense_act_fn", default="relu")
    projection = pick(hf, "feed_forward_proj", default="relu" if hf["model_type"] == "t5" else "gated-gelu")
    gate, _, activation = projection.rpartition("-")
    if gate not in ("", "gated"):
        raise ConfigError(f"{hf['model_type']} config: feed_forward_proj={projection!r} is not supported.")
    if projection == "gated-gelu":
        activation = "gelu_new"  # transformers' backward-compatible reading of T5 v1.1's "gated-gelu"
    # dense_act_fn and is_gated_act, when stored, override what feed_forward_proj implies (as in transformers)
    kind = mlp_kind({**hf, "dense_act_fn": pick(hf, "dense_act_fn", default=activation)}, "dense_act_fn")
    return GATED[kind] if pick(hf, "is_gated_act", default=gate == "gated") else kind


def _scales_head(hf: dict) -> bool:
    """Whether transformers multiplies the decoder output by d_model**-0.5 before the head (T5 v1.0's tied head)."""
    tied = hf.get("tie_word_embeddings") is not False
    if hf["model_type"] == "mt5":
        return False
    if hf["model_type"] in SCALE_FIELD_TYPES:  # a stored scale_decoder_outputs wins over tie_word_embeddings
        return bool(pick(hf, "scale_decoder_outputs", default=tied))
    return tied


def _sparse_step(layers: int, sparse_layers: int) -> int:
    return layers // sparse_layers if sparse_layers > 0 else layers


def _experts(hf: dict, layers: int, decoder_layers: int) -> dict:
    """Switch's mixture-of-experts fields: layer i is sparse when i % step == 1 (every layer when step is 1)."""
    reject(hf, router_dtype="float32")
    step = _sparse_step(layers, pick(hf, "num_sparse_encoder_layers", default=3))
    decoder_step = _sparse_step(decoder_layers, pick(hf, "num_sparse_decoder_layers", default=3))
    if step != decoder_step or step == 0:
        raise ConfigError(
            f"switch_transformers config: encoder sparse step {step} and decoder sparse step {decoder_step} must be "
            "equal and positive (num_sparse_encoder_layers / num_sparse_decoder_layers)."
        )
    return {
        "n_experts": pick(hf, "num_experts", default=8), "moe_every": step, "moe_offset": 1, "moe_router": "top1",
        "expert_capacity": pick(hf, "expert_capacity", default=64),
        "moe_router_bias": bool(hf.get("router_bias", False)),
        "router_jitter": float(pick(hf, "router_jitter_noise", default=0.01)),
        "router_aux_loss_coef": float(pick(hf, "router_aux_loss_coef", default=0.001)),
        "router_z_loss_coef": float(pick(hf, "router_z_loss_coef", default=0.001)),
    }


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a T5Config, MT5Config, UMT5Config or SwitchTransformersConfig dict."""
    model_type = hf["model_type"]
    layers = hf["num_layers"]
    decoder_layers = pick(hf, "num_decoder_layers", default=layers)
    d_model = hf["d_model"]
    experts = _experts(hf, layers, decoder_layers) if model_type == "switch_transformers" else {}
    return ModelConfig(
        family=model_type, arch="encoder_decoder", vocab_size=hf["vocab_size"], d_model=d_model, n_layers=layers,
        n_decoder_layers=decoder_layers, n_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
        max_seq_len=pick(hf, "n_positions", default=512), norm="rmsnorm",
        norm_eps=pick(hf, "layer_norm_epsilon", default=1e-6), norm_bias=False, position="relative",
        relative_buckets=pick(hf, "relative_attention_num_buckets", default=32),
        relative_max_distance=pick(hf, "relative_attention_max_distance", default=128),
        relative_per_layer=model_type == "umt5", qkv_bias=False, out_bias=False, attn_scale=1.0,
        mlp=_feed_forward(hf), mlp_bias=False, tie_embeddings=hf.get("tie_word_embeddings") is not False,
        head_input_scale=d_model ** -0.5 if _scales_head(hf) else 1.0,
        dropout=float(pick(hf, "dropout_rate", default=0.1)), **experts, **special_tokens(hf),
    )


def _differing_fields(config: ModelConfig, other: ModelConfig) -> list[str]:
    """Fields where two configs build different models (equivalent spellings and init_std aside)."""
    def comparable(c: ModelConfig) -> dict:
        return c.replace(head_dim=c.dim_head, n_kv_heads=c.kv_heads, n_decoder_layers=c.decoder_layers,
                         init_std=ModelConfig.init_std).to_dict()
    ours, theirs = comparable(config), comparable(other)
    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12))
    return [name for name, value in ours.items() if not same(value, theirs[name])]


def _sparse_layers(layers: int, step: int) -> int:
    """The num_sparse_*_layers that gives transformers' sparse step `step` over `layers` layers."""
    counts = [n for n in range(1, layers + 1) if layers // n == step]
    if not counts:
        raise ConfigError(f"ModelConfig.moe_every ({step}) has no switch_transformers equivalent for {layers} layers.")
    return counts[0]


def config_to_hf(config: ModelConfig) -> dict:
    """The transformers config dict of a T5-family ModelConfig; fields it cannot express raise ConfigError."""
    model_type = config.family
    hf = {
        "model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "vocab_size": config.vocab_size,
        "d_model": config.d_model, "d_kv": config.dim_head, "d_ff": config.d_ff, "num_layers": config.n_layers,
        "num_decoder_layers": config.decoder_layers, "num_heads": config.n_heads, "n_positions": config.max_seq_len,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance, "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps, "is_encoder_decoder": True,
        "tie_word_embeddings": config.tie_embeddings, **hf_tokens(config),
    }
    if model_type in SCALE_FIELD_TYPES:
        hf["scale_decoder_outputs"] = config.head_input_scale != 1.0
    if model_type == "switch_transformers":
        hf.update(
            dense_act_fn=hf_activation(config), num_experts=config.n_experts, expert_capacity=config.expert_capacity,
            num_sparse_encoder_layers=_sparse_layers(config.n_layers, config.moe_every),
            num_sparse_decoder_layers=_sparse_layers(config.decoder_layers, config.moe_every),
            router_bias=config.moe_router_bias, router_jitter_noise=config.router_jitter, router_dtype="float32",
            router_aux_loss_coef=config.router_aux_loss_coef, router_z_loss_coef=config.router_z_loss_coef,
        )
    else:
        ungated = {gated: kind for kind, gated in GATED.items()}.get(config.mlp, config.mlp)
        hf.update(feed_forward_proj=FEED_FORWARD_PROJ[config.mlp], is_gated_act=config.is_gated,
                  dense_act_fn=hf_activation(config.replace(mlp=ungated)))
    differing = _differing_fields(config, config_from_hf(hf))
    if differing:
        raise ConfigError(f"ModelConfig field(s) {', '.join(differing)} have no {model_type} checkpoint equivalent.")
    return hf


def from_checkpoint(config: ModelConfig, hf_state: dict) -> tuple[ModelConfig, dict]:
    """Read the token embedding the stacks use (their own copies when stored) and untie a head stored apart."""
    state = dict(hf_state)
    copies = [state[name] for name in EMBEDDING_COPIES if name in state]
    if any(not torch.equal(copy, copies[0]) for copy in copies[1:]):
        raise CheckpointError(
            f"{config.family} checkpoint has different encoder and decoder token embeddings; llmlab shares one."
        )
    if copies:
        if config.tie_embeddings and "shared.weight" in state and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["shared.weight"]  # transformers ties the head to shared.weight
        state["shared.weight"] = copies[0]
    if "shared.weight" in state:
        state.update({name: state["shared.weight"] for name in EMBEDDING_COPIES})
    return untie_stored_head(config, state, "lm_head.weight", "shared.weight"), state


def _copy(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    return tensor.clone()


def _feed_forward_rules(config: ModelConfig, layer: int, prefix: str) -> list[tuple[str, str]]:
    """(ours, theirs) names of one block's dense or mixture-of-experts feed-forward."""
    if config.family != "switch_transformers":
        inputs = [("gate", "wi_0"), ("up", "wi_1")] if config.is_gated else [("up", "wi")]
        return [(f"mlp.{a}.weight", f"{prefix}DenseReluDense.{b}.weight") for a, b in inputs + [("down", "wo")]]
    if not config.is_moe_layer(layer):
        return [("mlp.up.weight", f"{prefix}mlp.wi.weight"), ("mlp.down.weight", f"{prefix}mlp.wo.weight")]
    pairs = [("mlp.router.weight", f"{prefix}mlp.router.classifier.weight")]
    if config.moe_router_bias:
        pairs.append(("mlp.router.bias", f"{prefix}mlp.router.classifier.bias"))
    for e in range(config.n_experts):
        pairs += [(f"mlp.experts.{e}.up.weight", f"{prefix}mlp.experts.expert_{e}.wi.weight"),
                  (f"mlp.experts.{e}.down.weight", f"{prefix}mlp.experts.expert_{e}.wo.weight")]
    return pairs


def weight_rules(config: ModelConfig) -> list[Rule]:
    """llmlab ↔ HF tensor names for the T5 family (decoder blocks have a cross-attention sublayer in the middle)."""
    rules = [Rule("embed.tokens.weight", "shared.weight")]
    if not config.tie_embeddings:
        rules.append(Rule("head.weight", "lm_head.weight"))
        if config.family == "switch_transformers":  # transformers 5 reads the stacks' own copies when untied
            rules += [Rule("embed.tokens.weight", name, to_theirs=_copy) for name in EMBEDDING_COPIES]
    bias_name = "0.SelfAttention.relative_attention_bias.weight"
    for stack, n_layers in (("encoder", config.n_layers), ("decoder", config.decoder_layers)):
        rules.append(Rule(f"{stack}.norm.weight", f"{stack}.final_layer_norm.weight"))
        if not config.relative_per_layer:
            rules.append(Rule(f"{stack}.relative_bias.embedding.weight", f"{stack}.block.0.layer.{bias_name}"))
        for i in range(n_layers):
            pairs = [("attn_norm.weight", "0.layer_norm.weight")]
            pairs += [(f"attn.{p}.weight", f"0.SelfAttention.{p}.weight") for p in "qkvo"]
            if config.relative_per_layer:
                pairs.append(("relative_bias.embedding.weight", bias_name))
            feed_forward = "1"
            if stack == "decoder":
                pairs.append(("cross_norm.weight", "1.layer_norm.weight"))
                pairs += [(f"cross_attn.{p}.weight", f"1.EncDecAttention.{p}.weight") for p in "qkvo"]
                feed_forward = "2"
            pairs.append(("mlp_norm.weight", f"{feed_forward}.layer_norm.weight"))
            pairs += _feed_forward_rules(config, i, f"{feed_forward}.")
            rules += [Rule(f"{stack}.blocks.{i}.{a}", f"{stack}.block.{i}.layer.{b}") for a, b in pairs]
    return rules


IGNORE = (
    r"^(encoder|decoder)\.embed_tokens\.weight$",  # copies of shared.weight, checked in from_checkpoint
    r"^lm_head\.weight$",  # a tied head stored anyway (untie_stored_head keeps it when it differs)
    r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",  # unused in old checkpoints
)
FAMILIES = (Family(tuple(ARCHITECTURES), config_from_hf, config_to_hf, weight_rules, ignore=IGNORE,
                   from_checkpoint=from_checkpoint),)
