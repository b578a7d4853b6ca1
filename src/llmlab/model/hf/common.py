"""Small helpers shared by the family adapters: reading HF config fields and unsupported-option checks."""

from __future__ import annotations

import torch

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig


def pick(hf: dict, *names: str, default=None):
    """The first of several alternative HF config keys that is present and not None."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    return default


def rope_settings(hf: dict, default_base: float = 10000.0) -> dict:
    """rope_base (and rope_fraction when given) from v4 (rope_theta/rope_scaling) or v5 (rope_parameters) keys."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"{hf.get('model_type')} config: RoPE scaling type {rope_type!r} is not supported yet.")
    settings = {"rope_base": float(pick(params, "rope_theta", default=pick(hf, "rope_theta", "rotary_emb_base",
                                                                           default=default_base)))}
    fraction = pick(params, "partial_rotary_factor", default=pick(hf, "partial_rotary_factor", "rotary_pct"))
    if fraction is not None:
        settings["rope_fraction"] = float(fraction)
    return settings


def reject(hf: dict, **unsupported) -> None:
    """Raise ConfigError for the first HF option whose value differs from the one llmlab supports."""
    for name, supported in unsupported.items():
        if name in hf and hf[name] is not None and hf[name] != supported:
            raise ConfigError(
                f"{hf.get('model_type')} config: {name}={hf[name]!r} is not supported (only {supported!r})."
            )


# transformers' ACT2FN names → llmlab's ungated MLP kinds; the tanh formulas differ only by float rounding.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh", "gelu_accurate": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


def mlp_kind(hf: dict, key: str = "activation_function", default: str = "gelu_new") -> str:
    """The llmlab MLP kind of an ungated HF MLP whose activation name is stored under key."""
    name = pick(hf, key, default=default)
    if name not in HF_ACTIVATIONS:
        raise ConfigError(
            f"{hf.get('model_type')} config: {key}={name!r} is not supported "
            f"(supported: {', '.join(sorted(HF_ACTIVATIONS))})."
        )
    return HF_ACTIVATIONS[name]


def hf_activation(config: ModelConfig) -> str:
    """The transformers activation name of an ungated llmlab MLP kind (gelu_tanh → gelu_new)."""
    names = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}
    if config.mlp not in names:
        raise ConfigError(f"ModelConfig.mlp {config.mlp!r} has no {config.family} checkpoint equivalent.")
    return names[config.mlp]


def special_tokens(hf: dict) -> dict:
    """pad/bos/eos/decoder-start token ids, first of a list where HF stores several."""
    def one(value):
        return value[0] if isinstance(value, list) and value else value
    return {
        "pad_token_id": one(hf.get("pad_token_id")),
        "bos_token_id": one(hf.get("bos_token_id")),
        "eos_token_id": one(hf.get("eos_token_id")),
        "decoder_start_token_id": one(hf.get("decoder_start_token_id")),
    }


def hf_tokens(config: ModelConfig) -> dict:
    """The special-token ids of a ModelConfig under HF key names (omitting unset ones)."""
    ids = {"pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
           "eos_token_id": config.eos_token_id, "decoder_start_token_id": config.decoder_start_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def untie_stored_head(config: ModelConfig, hf_state: dict[str, torch.Tensor], head: str, embedding: str) -> ModelConfig:
    """Untie the head when the checkpoint stores it apart from the embedding, with other values (as transformers 5)."""
    stored, shared = hf_state.get(head), hf_state.get(embedding)
    if not (config.lm_head and config.tie_embeddings) or stored is None or shared is None:
        return config
    return config if torch.equal(stored, shared) else config.replace(tie_embeddings=False)
