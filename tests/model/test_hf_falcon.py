"""Falcon: llmlab equals transformers' FalconForCausalLM (logits, export, generation) in each decoder layout."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.falcon import config_from_hf, config_to_hf  # noqa: E402
from tests.model.parity import check_parity, perturb_vectors  # noqa: E402

SHAPES = {
    # Falcon-7B: one shared k/v head, [q heads | k | v], parallel attention and MLP under one layer norm.
    "7b-multi-query": dict(num_attention_heads=4, multi_query=True, parallel_attn=True),
    # Falcon-40B: kv groups laid out [group, q per group + 2, head_dim], ln_attn and ln_mlp.
    "40b-2-groups-2-norms": dict(num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
                                 num_ln_in_parallel_attn=2),
    "40b-2-groups-1-norm": dict(num_attention_heads=6, num_kv_heads=2, new_decoder_architecture=True,
                                num_ln_in_parallel_attn=1, bias=True, tie_word_embeddings=False),
    "40b-multi-query-2-norms": dict(num_attention_heads=4, num_kv_heads=1, new_decoder_architecture=True),
    # Plain multi-head [heads, 3, head_dim], sequential residual with post_attention_layernorm (Falcon-RW layout).
    "multi-head-sequential": dict(num_attention_heads=4, multi_query=False, parallel_attn=False, bias=True,
                                  rope_theta=500.0),
    "multi-query-sequential-untied": dict(num_attention_heads=8, multi_query=True, parallel_attn=False,
                                          tie_word_embeddings=False),
}


def tiny_falcon(**shape) -> "transformers.FalconForCausalLM":
    """A 2-layer random Falcon with non-trivial norms and biases."""
    torch.manual_seed(0)
    heads = shape["num_attention_heads"]
    config = transformers.FalconConfig(
        vocab_size=101, hidden_size=16 * heads if heads < 8 else 64, ffn_hidden_size=96, num_hidden_layers=2,
        max_position_embeddings=64, initializer_range=0.1, bos_token_id=1, eos_token_id=2, **shape,
    )
    return perturb_vectors(transformers.FalconForCausalLM(config))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_falcon_matches_transformers(tmp_path, shape):
    check_parity(tiny_falcon(**shape), tmp_path)


def test_falcon_layouts_map_to_config():
    mqa = config_from_hf(tiny_falcon(**SHAPES["7b-multi-query"]).config.to_dict())
    assert (mqa.kv_heads, mqa.parallel_residual, mqa.parallel_shared_norm, mqa.mlp) == (1, True, True, "gelu")
    new = config_from_hf(tiny_falcon(**SHAPES["40b-2-groups-2-norms"]).config.to_dict())
    assert (new.kv_heads, new.parallel_residual, new.parallel_shared_norm) == (2, True, False)
    exported = config_to_hf(new)
    assert exported["new_decoder_architecture"] and exported["num_ln_in_parallel_attn"] == 2
    sequential = config_from_hf(tiny_falcon(**SHAPES["multi-head-sequential"]).config.to_dict())
    assert (sequential.kv_heads, sequential.parallel_residual, sequential.rope_base) == (4, False, 500.0)


@pytest.mark.parametrize(
    "change, words",
    [({"alibi": True}, "alibi"), ({"activation": "tanh"}, "activation"),
     ({"new_decoder_architecture": True, "parallel_attn": False}, "parallel_attn"),
     ({"num_ln_in_parallel_attn": 2}, "num_ln_in_parallel_attn"),
     ({"multi_query": False, "num_kv_heads": 2}, "num_kv_heads"),
     ({"apply_residual_connection_post_layernorm": True}, "apply_residual"),
     ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}, "RoPE scaling")],
    ids=["alibi", "activation", "new-arch-sequential", "two-norms-old-arch", "mha-kv-heads", "post-ln-residual",
         "rope-scaling"],
)
def test_falcon_rejects_unsupported_options(change, words):
    hf = {"model_type": "falcon", "vocab_size": 101, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "multi_query": True, "parallel_attn": True, **change}
    with pytest.raises(ConfigError, match=words):
        config_from_hf(hf)


def test_falcon_export_rejects_sequential_grouped_query():
    config = config_from_hf(tiny_falcon(**SHAPES["40b-2-groups-1-norm"]).config.to_dict())
    with pytest.raises(ConfigError, match="n_kv_heads"):
        config_to_hf(config.replace(parallel_residual=False))
