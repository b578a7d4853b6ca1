"""ModelConfig: every architectural choice of the survey (§4.2) as one frozen, validated, JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

from llmlab.errors import ConfigError

ARCHS = ("decoder", "prefix_decoder", "encoder", "encoder_decoder")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post", "sandwich")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "glm2d", "none")
ROPE_LAYOUTS = ("half", "interleaved")
MLP_KINDS = {  # name -> (activation, gated)
    "gelu": ("gelu", False), "gelu_tanh": ("gelu_tanh", False), "relu": ("relu", False), "silu": ("silu", False),
    "swiglu": ("silu", True), "geglu": ("gelu", True), "geglu_tanh": ("gelu_tanh", True), "reglu": ("relu", True),
}
LAYER_KINDS = ("global", "local")
ROUTERS = ("top1", "topk")


@dataclass(frozen=True)
class ModelConfig:
    """The whole design space of a transformer language model; families differ only by these values."""

    arch: str = "decoder"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 2048
    max_seq_len: int = 2048
    n_decoder_layers: int | None = None

    # normalisation
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_placement: str = "pre"
    final_norm: bool = True
    embedding_norm: bool = False
    residual_scale: float = 1.0

    # positions
    position: str = "learned"
    position_offset: int = 0
    rope_base: float = 10000.0
    rope_fraction: float = 1.0
    rope_layout: str = "half"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    relative_per_layer: bool = False
    type_vocab_size: int = 0

    # attention
    fused_qkv: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    attn_scale: float | None = None
    attn_window: int | None = None
    layer_kinds: tuple[str, ...] | None = None

    # feed-forward and residual
    mlp: str = "gelu"
    mlp_bias: bool = True
    parallel_residual: bool = False
    parallel_shared_norm: bool = True

    # embeddings and head
    tie_embeddings: bool = True
    lm_head: bool = True
    head_bias: bool = False
    head_transform: bool = False
    head_input_scale: float = 1.0
    embedding_scale: float = 1.0
    embed_proj_dim: int | None = None
    pooler: bool = False

    # mixture of experts
    n_experts: int = 0
    moe_top_k: int = 1
    moe_every: int = 1
    moe_offset: int = 0
    moe_router: str = "top1"
    moe_router_bias: bool = False
    expert_capacity: int | None = None
    capacity_factor: float | None = None
    router_jitter: float = 0.0
    router_aux_loss_coef: float = 0.0
    router_z_loss_coef: float = 0.0
    moe_normalize_weights: bool = False

    # special tokens
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None

    dropout: float = 0.0
    init_std: float = 0.02
    init_branch_gain: float = 1.0  # DeepNorm's β: scales the initial value, output and feed-forward weights
    family: str = "custom"

    def __post_init__(self) -> None:
        if self.layer_kinds is not None and not isinstance(self.layer_kinds, tuple):
            object.__setattr__(self, "layer_kinds", tuple(self.layer_kinds))
        self.validate()

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (grouped- or multi-query attention when below n_heads)."""
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        """The width of one attention head."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        """The number of decoder blocks of an encoder-decoder."""
        return self.n_decoder_layers or self.n_layers

    @property
    def rotary_dim(self) -> int:
        """How many of each head's channels RoPE rotates."""
        return int(self.dim_head * self.rope_fraction)

    @property
    def is_gated(self) -> bool:
        """Whether the MLP is a gated linear unit (SwiGLU, GeGLU, ReGLU)."""
        return MLP_KINDS[self.mlp][1]

    @property
    def activation(self) -> str:
        """The MLP's nonlinearity: gelu, gelu_tanh, relu or silu."""
        return MLP_KINDS[self.mlp][0]

    @property
    def has_encoder(self) -> bool:
        """Whether the model has a bidirectional encoder stack."""
        return self.arch in ("encoder", "encoder_decoder")

    @property
    def has_decoder(self) -> bool:
        """Whether the model has a causal (or prefix) decoder stack."""
        return self.arch != "encoder"

    def layer_kind(self, layer: int) -> str:
        """Whether attention in this layer is global or local (sliding window)."""
        if self.layer_kinds is None:
            return "local" if self.attn_window else "global"
        return self.layer_kinds[layer % len(self.layer_kinds)]

    def is_moe_layer(self, layer: int) -> bool:
        """Whether this layer's feed-forward is a mixture of experts."""
        return self.n_experts > 0 and layer % self.moe_every == self.moe_offset % self.moe_every

    def validate(self) -> None:
        """Raise ConfigError naming the fields of an impossible combination."""
        choices = {
            "arch": ARCHS, "norm": NORMS, "norm_placement": NORM_PLACEMENTS, "position": POSITIONS,
            "rope_layout": ROPE_LAYOUTS, "mlp": tuple(MLP_KINDS), "moe_router": ROUTERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ModelConfig.{name} is {getattr(self, name)!r}; choose one of {', '.join(allowed)}.")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig.d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); set head_dim."
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"ModelConfig.n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.kv_heads}).")
        if self.position == "rope":
            if not 0 < self.rope_fraction <= 1:
                raise ConfigError(f"ModelConfig.rope_fraction must be in (0, 1], got {self.rope_fraction}.")
            if self.rotary_dim % 2:
                raise ConfigError(
                    f"ModelConfig.rope_fraction ({self.rope_fraction}) × head width ({self.dim_head}) must be even."
                )
        if self.position == "glm2d" and self.arch != "prefix_decoder":
            raise ConfigError("ModelConfig.position 'glm2d' needs arch 'prefix_decoder' (GLM's part A / part B).")
        if self.position == "relative" and self.relative_buckets < 2:
            raise ConfigError("ModelConfig.relative_buckets must be at least 2 for relative positions.")
        if self.layer_kinds is not None:
            bad = [k for k in self.layer_kinds if k not in LAYER_KINDS]
            if bad or not self.layer_kinds:
                raise ConfigError(f"ModelConfig.layer_kinds must list 'global' or 'local', got {self.layer_kinds!r}.")
            if "local" in self.layer_kinds and self.attn_window is None:
                raise ConfigError("ModelConfig.layer_kinds has 'local' layers but attn_window is not set.")
        if self.attn_window is not None and self.attn_window <= 0:
            raise ConfigError(f"ModelConfig.attn_window must be positive, got {self.attn_window}.")
        if (self.head_bias or self.head_transform) and not self.lm_head:
            raise ConfigError("ModelConfig.head_bias and head_transform need lm_head.")
        if self.embed_proj_dim is not None and self.embed_proj_dim <= 0:
            raise ConfigError(f"ModelConfig.embed_proj_dim must be positive, got {self.embed_proj_dim}.")
        if self.type_vocab_size and self.has_decoder:
            raise ConfigError("ModelConfig.type_vocab_size (token types) is only supported with arch 'encoder'.")
        if self.pooler and self.arch != "encoder":
            raise ConfigError("ModelConfig.pooler needs arch 'encoder'.")
        if self.parallel_residual and self.norm_placement != "pre":
            raise ConfigError("ModelConfig.parallel_residual needs norm_placement 'pre'.")
        if self.parallel_residual and self.arch == "encoder_decoder":
            raise ConfigError("ModelConfig.parallel_residual is not supported with arch 'encoder_decoder'.")
        if self.n_experts < 0 or (self.n_experts and not 1 <= self.moe_top_k <= self.n_experts):
            raise ConfigError(
                f"ModelConfig.moe_top_k ({self.moe_top_k}) must be between 1 and n_experts ({self.n_experts})."
            )
        if self.n_experts and self.moe_router == "top1" and self.moe_top_k != 1:
            raise ConfigError("ModelConfig.moe_router 'top1' needs moe_top_k 1; use moe_router 'topk'.")
        if self.n_experts and self.moe_every < 1:
            raise ConfigError("ModelConfig.moe_every must be at least 1.")
        if self.expert_capacity is not None and self.capacity_factor is not None:
            raise ConfigError("ModelConfig.expert_capacity and capacity_factor are both set; choose one.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        if data["layer_kinds"] is not None:
            data["layer_kinds"] = list(data["layer_kinds"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "ModelConfig":
        """Build a config from a dict, rejecting unknown fields by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a JSON object of ModelConfig fields.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where} has unknown ModelConfig field(s): {', '.join(unknown)}.")
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"{where} is not a valid ModelConfig: {error}.") from None

    def to_json(self) -> str:
        """Serialise to a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"Unknown ModelConfig field(s): {', '.join(unknown)}.")
        return dataclasses.replace(self, **changes)

