"""Presets: one small function per family returning the ModelConfig of a published size (or a tiny one).

Every family is a base of architectural choices plus a table of sizes, each a row of the shape the paper or the
published Hugging Face config gives. ``size="tiny"`` keeps the family's architecture at a few hundred thousand
parameters for tests and demos. Keyword overrides replace any ModelConfig field::

    presets.llama(size="7b")
    presets.t5(size="small")
    presets.get("gpt_neox", "20b", max_seq_len=4096)
"""

from __future__ import annotations

from typing import Any, Callable

from llmlab.errors import ConfigError
from llmlab.model.config import ModelConfig

Shape = dict[str, Any]
_PRESETS: dict[str, tuple[Callable[..., ModelConfig], dict[str, Shape]]] = {}
_SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def shape(n_layers: int, d_model: int, n_heads: int, d_ff: int | None = None, **fields: Any) -> Shape:
    """One size row: layers, width, heads and the feed-forward width (4 × d_model unless given)."""
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff or 4 * d_model, **fields}


TINY = shape(2, 128, 4, 512, vocab_size=1024, max_seq_len=256)


def _build(name: str, size: str, sizes: dict[str, Shape], overrides: dict[str, Any],
           derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None, **base: Any) -> ModelConfig:
    """The family's base fields, then the size's row, then fields derived from those, then the caller's overrides."""
    if size not in sizes:
        raise ConfigError(f"presets.{name} has no size {size!r}; choose one of {', '.join(sizes)}.")
    data = {**base, **sizes[size]}
    if derive is not None:
        data.update(derive(data))
    data.update(overrides)
    for token in set(_SPECIAL_TOKENS) - set(overrides):  # a small vocabulary cannot hold e.g. GPT-2's id 50256
        if data.get(token) is not None and data[token] >= data["vocab_size"]:
            data[token] = data["vocab_size"] - 1
    return ModelConfig.from_dict(data, where=f"presets.{name}(size={size!r})")


def _register(sizes: dict[str, Shape], name: str | None = None):
    def wrap(function: Callable[..., ModelConfig]) -> Callable[..., ModelConfig]:
        _PRESETS[name or function.__name__] = (function, sizes)
        return function
    return wrap


def names() -> list[str]:
    """The names of every preset, for get()."""
    return sorted(_PRESETS)


def sizes(name: str) -> list[str]:
    """The sizes a preset offers, smallest published first, 'tiny' last."""
    return list(_lookup(name)[1])


def get(name: str, size: str | None = None, **overrides: Any) -> ModelConfig:
    """The ModelConfig of preset `name` at `size` (its default size when None), with field overrides."""
    function = _lookup(name)[0]
    return function(**overrides) if size is None else function(size=size, **overrides)


def _lookup(name: str) -> tuple[Callable[..., ModelConfig], dict[str, Shape]]:
    if name not in _PRESETS:
        raise ConfigError(f"There is no preset named {name!r}; choose one of {', '.join(names())}.")
    return _PRESETS[name]


# --- GPT-2, GPT-3, GPT-Neo, GPT-J, GPT-NeoX / Pythia -------------------------------------------------------------

GPT2_SIZES = {  # Radford et al. 2019, Table 2, with the HF checkpoints' widths
    "124m": shape(12, 768, 12), "355m": shape(24, 1024, 16), "774m": shape(36, 1280, 20),
    "1.5b": shape(48, 1600, 25), "tiny": TINY,
}


@_register(GPT2_SIZES)
def gpt2(size: str = "124m", **overrides: Any) -> ModelConfig:
    """GPT-2: pre-LN, learned positions, fused QKV, GELU (tanh), tied embeddings."""
    return _build(
        "gpt2", size, GPT2_SIZES, overrides, family="gpt2", vocab_size=50257, max_seq_len=1024,
        position="learned", fused_qkv=True, mlp="gelu_tanh", tie_embeddings=True,
        bos_token_id=50256, eos_token_id=50256,
    )


GPT3_SIZES = {  # Brown et al. 2020, Table 2.1
    "125m": shape(12, 768, 12), "350m": shape(24, 1024, 16), "760m": shape(24, 1536, 16),
    # Table 2.1 lists 24 heads of 128 for the 1.3B model, but 24 × 128 ≠ d_model 2048 and would make 1.5B
    # parameters; 16 heads of 128 keep d_model = heads × head width and the stated 1.3B.
    "1.3b": shape(24, 2048, 16), "2.7b": shape(32, 2560, 32), "6.7b": shape(32, 4096, 32),
    "13b": shape(40, 5140, 40, head_dim=128),  # as published: d_model 5140 but 40 heads × 128 = 5120
    "175b": shape(96, 12288, 96), "tiny": {**TINY, "attn_window": 16},
}


@_register(GPT3_SIZES)
def gpt3(size: str = "125m", **overrides: Any) -> ModelConfig:
    """GPT-3: GPT-2's architecture with 2048 positions and alternating dense / locally banded sparse attention."""
    # The paper does not state the band's width; 256 is what its open replications (GPT-Neo) use.
    return _build(
        "gpt3", size, GPT3_SIZES, overrides, family="gpt3", vocab_size=50257, max_seq_len=2048,
        position="learned", fused_qkv=True, mlp="gelu_tanh", tie_embeddings=True,
        layer_kinds=("global", "local"), attn_window=256, bos_token_id=50256, eos_token_id=50256,
    )


GPT_NEO_SIZES = {
    "125m": shape(12, 768, 12), "1.3b": shape(24, 2048, 16), "2.7b": shape(32, 2560, 20),
    "tiny": {**TINY, "attn_window": 16},
}


@_register(GPT_NEO_SIZES)
def gpt_neo(size: str = "125m", **overrides: Any) -> ModelConfig:
    """GPT-Neo: GPT-3-style alternating global / local (window 256) attention, unscaled, no q/k/v biases."""
    return _build(
        "gpt_neo", size, GPT_NEO_SIZES, overrides, family="gpt_neo", vocab_size=50257, max_seq_len=2048,
        position="learned", qkv_bias=False, attn_scale=1.0, layer_kinds=("global", "local"), attn_window=256,
        mlp="gelu_tanh", tie_embeddings=True, bos_token_id=50256, eos_token_id=50256,
    )


GPTJ_SIZES = {"6b": shape(28, 4096, 16), "tiny": TINY}


@_register(GPTJ_SIZES)
def gptj(size: str = "6b", **overrides: Any) -> ModelConfig:
    """GPT-J: parallel attention and MLP on one norm, interleaved RoPE on 64 of 256 head channels, untied head."""
    return _build(
        "gptj", size, GPTJ_SIZES, overrides, family="gptj", vocab_size=50400, max_seq_len=2048,
        position="rope", rope_fraction=0.25, rope_layout="interleaved", qkv_bias=False, out_bias=False,
        mlp="gelu_tanh", parallel_residual=True, tie_embeddings=False, head_bias=True,
        bos_token_id=50256, eos_token_id=50256,
    )


def _neox(name: str, size: str, sizes: dict[str, Shape], overrides: dict[str, Any], mlp: str) -> ModelConfig:
    return _build(
        name, size, sizes, overrides, family="gpt_neox", vocab_size=50432, max_seq_len=2048, position="rope",
        rope_fraction=0.25, fused_qkv=True, mlp=mlp, parallel_residual=True, parallel_shared_norm=False,
        tie_embeddings=False, bos_token_id=0, eos_token_id=0,
    )


GPT_NEOX_SIZES = {"20b": shape(44, 6144, 64), "tiny": TINY}


@_register(GPT_NEOX_SIZES)
def gpt_neox(size: str = "20b", **overrides: Any) -> ModelConfig:
    """GPT-NeoX-20B: parallel attention and MLP with separate norms, RoPE on a quarter of each head, untied head."""
    return _neox("gpt_neox", size, GPT_NEOX_SIZES, overrides, mlp="gelu_tanh")  # hidden_act "gelu_fast"


PYTHIA_SIZES = {  # Biderman et al. 2023, Table 1; vocabularies as in the HF checkpoints
    "70m": shape(6, 512, 8, vocab_size=50304), "160m": shape(12, 768, 12, vocab_size=50304),
    "410m": shape(24, 1024, 16, vocab_size=50304), "1b": shape(16, 2048, 8, vocab_size=50304),
    "1.4b": shape(24, 2048, 16, vocab_size=50304), "2.8b": shape(32, 2560, 32, vocab_size=50304),
    "6.9b": shape(32, 4096, 32, vocab_size=50432), "12b": shape(36, 5120, 40, vocab_size=50688), "tiny": TINY,
}


@_register(PYTHIA_SIZES)
def pythia(size: str = "70m", **overrides: Any) -> ModelConfig:
    """Pythia: the GPT-NeoX architecture at eight sizes (exact GELU)."""
    return _neox("pythia", size, PYTHIA_SIZES, overrides, mlp="gelu")


# --- OPT, BLOOM, MPT, Falcon ---------------------------------------------------------------------------------------

OPT_SIZES = {  # Zhang et al. 2022, Table 1
    "125m": shape(12, 768, 12),
    # OPT-350m alone is post-LN without a final norm, and embeds in 512 dimensions projected to 1024.
    "350m": shape(24, 1024, 16, norm_placement="post", final_norm=False, embed_proj_dim=512),
    "1.3b": shape(24, 2048, 32), "2.7b": shape(32, 2560, 32), "6.7b": shape(32, 4096, 32),
    "13b": shape(40, 5120, 40), "30b": shape(48, 7168, 56), "66b": shape(64, 9216, 72),
    "175b": shape(96, 12288, 96), "tiny": TINY,
}


@_register(OPT_SIZES)
def opt(size: str = "125m", **overrides: Any) -> ModelConfig:
    """OPT: pre-LN, ReLU, learned positions offset by 2, tied embeddings."""
    return _build(
        "opt", size, OPT_SIZES, overrides, family="opt", vocab_size=50272, max_seq_len=2048, position="learned",
        position_offset=2, mlp="relu", tie_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )


BLOOM_SIZES = {  # BigScience 2022, Table 3
    "560m": shape(24, 1024, 16), "1b1": shape(24, 1536, 16), "1b7": shape(24, 2048, 16),
    "3b": shape(30, 2560, 32), "7b1": shape(30, 4096, 32), "176b": shape(70, 14336, 112), "tiny": TINY,
}


@_register(BLOOM_SIZES)
def bloom(size: str = "560m", **overrides: Any) -> ModelConfig:
    """BLOOM: ALiBi, a LayerNorm after the embedding, fused QKV, GELU (tanh), tied embeddings."""
    return _build(
        "bloom", size, BLOOM_SIZES, overrides, family="bloom", vocab_size=250880, max_seq_len=2048,
        position="alibi", embedding_norm=True, fused_qkv=True, mlp="gelu_tanh", tie_embeddings=True,
        pad_token_id=3, bos_token_id=1, eos_token_id=2,
    )


MPT_SIZES = {"7b": shape(32, 4096, 32), "tiny": TINY}


@_register(MPT_SIZES)
def mpt(size: str = "7b", **overrides: Any) -> ModelConfig:
    """MPT: ALiBi, no biases anywhere (norms included), fused QKV, tied embeddings."""
    return _build(
        "mpt", size, MPT_SIZES, overrides, family="mpt", vocab_size=50432, max_seq_len=2048, position="alibi",
        norm_bias=False, fused_qkv=True, qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=True,
        eos_token_id=0,
    )


FALCON_SIZES = {
    "7b": shape(32, 4544, 71, n_kv_heads=1),  # multi-query, one norm for the parallel attention and MLP
    # the "new decoder architecture": 8 key/value groups and separate norms for attention and MLP
    "40b": shape(60, 8192, 128, n_kv_heads=8, parallel_shared_norm=False),
    "tiny": {**TINY, "n_kv_heads": 1},
}


@_register(FALCON_SIZES)
def falcon(size: str = "7b", **overrides: Any) -> ModelConfig:
    """Falcon: parallel attention and MLP, RoPE, fused QKV, no linear biases, tied embeddings."""
    return _build(
        "falcon", size, FALCON_SIZES, overrides, family="falcon", vocab_size=65024, max_seq_len=2048,
        position="rope", fused_qkv=True, qkv_bias=False, out_bias=False, mlp_bias=False, parallel_residual=True,
        tie_embeddings=True, bos_token_id=11, eos_token_id=11,
    )


# --- LLaMA, the LLaMA-style prefix decoder, PaLM -------------------------------------------------------------------

LLAMA_SIZES = {  # Touvron et al. 2023a, Table 2
    "7b": shape(32, 4096, 32, 11008), "13b": shape(40, 5120, 40, 13824), "33b": shape(60, 6656, 52, 17920),
    "65b": shape(80, 8192, 64, 22016),
    "70b": shape(80, 8192, 64, 28672, n_kv_heads=8, norm_eps=1e-5, max_seq_len=4096),  # LLaMA-2 70B, GQA
    "tiny": {**TINY, "n_kv_heads": 2, "d_ff": 352},
}


def _llama_base() -> dict[str, Any]:
    return dict(vocab_size=32000, max_seq_len=2048, norm="rmsnorm", norm_eps=1e-6, position="rope", mlp="swiglu",
                qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False, bos_token_id=1, eos_token_id=2)


@_register(LLAMA_SIZES)
def llama(size: str = "7b", **overrides: Any) -> ModelConfig:
    """LLaMA: pre-RMSNorm, SwiGLU, RoPE, no biases, untied head (grouped-query attention at 70B)."""
    return _build("llama", size, LLAMA_SIZES, overrides, family="llama", arch="decoder", **_llama_base())


@_register(LLAMA_SIZES)
def prefix_llama(size: str = "7b", **overrides: Any) -> ModelConfig:
    """A LLaMA-style prefix decoder: bidirectional attention over the prefix, causal after it."""
    return _build("prefix_llama", size, LLAMA_SIZES, overrides, family="prefix_llama", arch="prefix_decoder",
                  **_llama_base())


PALM_SIZES = {  # Chowdhery et al. 2022, Table 1: heads of width 256, one shared key/value head
    "8b": shape(32, 4096, 16, head_dim=256), "62b": shape(64, 8192, 32, head_dim=256),
    "540b": shape(118, 18432, 48, head_dim=256), "tiny": TINY,
}


@_register(PALM_SIZES)
def palm(size: str = "8b", **overrides: Any) -> ModelConfig:
    """PaLM: SwiGLU, parallel layers, multi-query attention, RoPE, no biases, shared input/output embeddings."""
    return _build(
        "palm", size, PALM_SIZES, overrides, family="palm", vocab_size=256000, max_seq_len=2048, norm_bias=False,
        position="rope", n_kv_heads=1, qkv_bias=False, out_bias=False, mlp="swiglu", mlp_bias=False,
        parallel_residual=True, tie_embeddings=True,
    )


# --- T5 and its descendants, Switch Transformers ---------------------------------------------------------------------

T5_SIZES = {  # Raffel et al. 2020, §3.7: small, base, large, 3B, 11B
    "small": shape(6, 512, 8, 2048, head_dim=64), "base": shape(12, 768, 12, 3072, head_dim=64),
    "large": shape(24, 1024, 16, 4096, head_dim=64), "3b": shape(24, 1024, 32, 16384, head_dim=128),
    "11b": shape(24, 1024, 128, 65536, head_dim=128), "tiny": TINY,
}
T5_V1_1_SIZES = {  # the T5 v1.1 checkpoints (also Flan-T5, mT5, umT5)
    "small": shape(8, 512, 6, 1024, head_dim=64), "base": shape(12, 768, 12, 2048, head_dim=64),
    "large": shape(24, 1024, 16, 2816, head_dim=64), "xl": shape(24, 2048, 32, 5120, head_dim=64),
    "xxl": shape(24, 4096, 64, 10240, head_dim=64), "tiny": TINY,
}
UMT5_SIZES = {size: T5_V1_1_SIZES[size] for size in ("small", "base", "xl", "xxl", "tiny")}


def _t5(name: str, size: str, sizes: dict[str, Shape], overrides: dict[str, Any], version: str,
        **fields: Any) -> ModelConfig:
    if version == "1.0":  # ReLU and an embedding shared with the head, rescaled by d_model^-1/2 before it
        fields = dict(mlp="relu", tie_embeddings=True, **fields)
        derive = lambda data: {"head_input_scale": data["d_model"] ** -0.5}  # noqa: E731
    elif version == "1.1":  # GeGLU (tanh) and a separate head
        fields = dict(mlp="geglu_tanh", tie_embeddings=False, **fields)
        derive = None
    else:
        raise ConfigError(f"presets.{name} version must be '1.0' or '1.1', got {version!r}.")
    base = dict(
        family="t5", arch="encoder_decoder", vocab_size=32128, max_seq_len=512, norm="rmsnorm", norm_eps=1e-6,
        norm_bias=False, position="relative", relative_buckets=32, relative_max_distance=128, attn_scale=1.0,
        qkv_bias=False, out_bias=False, mlp_bias=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return _build(name, size, sizes, overrides, derive=derive, **{**base, **fields})


@_register(T5_SIZES)
def t5(size: str = "small", version: str = "1.0", **overrides: Any) -> ModelConfig:
    """T5: encoder-decoder, RMSNorm, relative position buckets, no biases; version '1.1' takes its own sizes."""
    if version == "1.1":
        return t5_v1_1(size, **overrides)
    return _t5("t5", size, T5_SIZES, overrides, version)


@_register(T5_V1_1_SIZES)
def t5_v1_1(size: str = "small", **overrides: Any) -> ModelConfig:
    """T5 v1.1: T5 with GeGLU and an untied head."""
    return _t5("t5_v1_1", size, T5_V1_1_SIZES, overrides, "1.1")


@_register(T5_V1_1_SIZES)
def flan_t5(size: str = "small", **overrides: Any) -> ModelConfig:
    """Flan-T5 (Chung et al. 2022): T5 v1.1 instruction-tuned; the same architecture."""
    return _t5("flan_t5", size, T5_V1_1_SIZES, overrides, "1.1")


@_register(T5_V1_1_SIZES)
def mt5(size: str = "small", **overrides: Any) -> ModelConfig:
    """mT5 (Xue et al. 2021): T5 v1.1 with a 250k multilingual vocabulary."""
    return _t5("mt5", size, T5_V1_1_SIZES, overrides, "1.1", family="mt5", vocab_size=250112)


@_register(UMT5_SIZES)
def umt5(size: str = "small", **overrides: Any) -> ModelConfig:
    """umT5 (Chung et al. 2023): mT5 with a relative position bias in every layer."""
    return _t5("umt5", size, UMT5_SIZES, overrides, "1.1", family="umt5", vocab_size=256384,
               relative_per_layer=True)


SWITCH_SIZES = {  # the google/switch-* checkpoints: experts in every other layer
    **{f"base-{n}": shape(12, 768, 12, 3072, head_dim=64, n_experts=n) for n in (8, 16, 32, 64, 128)},
    "large-128": shape(24, 1024, 16, 4096, head_dim=64, n_experts=128),
    "tiny": {**TINY, "n_experts": 4},
}


@_register(SWITCH_SIZES)
def switch(size: str = "base-8", **overrides: Any) -> ModelConfig:
    """Switch Transformers (Fedus et al. 2021): T5 whose every other feed-forward is a top-1 mixture of experts."""
    return _t5(
        "switch", size, SWITCH_SIZES, overrides, "1.0", family="switch_transformers", moe_every=2, moe_offset=1,
        moe_router="top1", expert_capacity=64, router_jitter=0.01, router_aux_loss_coef=0.001,
        router_z_loss_coef=0.001,
    )


# --- BERT, GLM --------------------------------------------------------------------------------------------------------

BERT_SIZES = {"base": shape(12, 768, 12), "large": shape(24, 1024, 16), "tiny": TINY}  # Devlin et al. 2019


@_register(BERT_SIZES)
def bert(size: str = "base", **overrides: Any) -> ModelConfig:
    """BERT: post-LN encoder with token types, an embedding LayerNorm, the masked-LM head and the pooler."""
    return _build(
        "bert", size, BERT_SIZES, overrides, family="bert", arch="encoder", vocab_size=30522, max_seq_len=512,
        type_vocab_size=2, norm_eps=1e-12, norm_placement="post", final_norm=False, embedding_norm=True,
        position="learned", mlp="gelu", tie_embeddings=True, head_transform=True, head_bias=True, pooler=True,
        pad_token_id=0,
    )


GLM_SIZES = {  # the THUDM/GLM README's models and their configs
    "base": shape(12, 768, 12), "large": shape(24, 1024, 16), "410m": shape(30, 1024, 16),
    "515m": shape(30, 1152, 18),
    "10b": shape(48, 4096, 64, vocab_size=50304, max_seq_len=1024),  # GPT-2's BPE vocabulary, padded
    "tiny": TINY,
}


@_register(GLM_SIZES)
def glm(size: str = "large", **overrides: Any) -> ModelConfig:
    """GLM (Du et al. 2022): autoregressive blank infilling, a prefix decoder with 2-D positions."""
    return _build(
        "glm", size, GLM_SIZES, overrides, family="glm", arch="prefix_decoder", vocab_size=30592, max_seq_len=512,
        position="glm2d", fused_qkv=True, mlp="gelu", tie_embeddings=True,
    )


def deepnorm(config: ModelConfig) -> ModelConfig:
    """config with DeepNorm (Wang et al. 2022, DeepNet): post-norm residuals x·α + f(x) and the value, output and
    feed-forward weights initialised β times smaller, with α = (2N)^(1/4), β = (8N)^(-1/4) for N layers (the
    paper's decoder-only / encoder-only constants)."""
    if config.arch == "encoder_decoder":
        raise ConfigError("deepnorm needs one residual scale per stack for an encoder-decoder; "
                          "ModelConfig has one (residual_scale), so use a decoder or an encoder.")
    layers = config.n_layers
    return config.replace(norm_placement="post", residual_scale=(2 * layers) ** 0.25,
                          init_branch_gain=(8 * layers) ** -0.25)
