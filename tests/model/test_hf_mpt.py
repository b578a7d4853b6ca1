"""MPT: llmlab equals transformers' MptForCausalLM (logits, export, generation); ALiBi slopes match MPT's."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor  # noqa: E402

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.mpt import config_from_hf, config_to_hf  # noqa: E402
from llmlab.model.positions import alibi_slopes  # noqa: E402
from tests.model.parity import check_parity, perturb_vectors  # noqa: E402

SHAPES = {
    "4-heads-tied": dict(n_heads=4, d_model=64, expansion_ratio=4),
    "6-heads-tied": dict(n_heads=6, d_model=48, expansion_ratio=4),
    "6-heads-ratio-2-untied": dict(n_heads=6, d_model=48, expansion_ratio=2, tie_word_embeddings=False),
    "12-heads-softmax-scale": dict(n_heads=12, d_model=48, attn_config={"softmax_scale": 0.3}),
}


def tiny_mpt(**shape) -> "transformers.MptForCausalLM":
    """A 2-layer random MPT with non-trivial norm weights."""
    torch.manual_seed(0)
    config = transformers.MptConfig(vocab_size=101, n_layers=2, max_seq_len=64, initializer_range=0.1,
                                    bos_token_id=1, eos_token_id=2, **shape)
    return perturb_vectors(transformers.MptForCausalLM(config))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_mpt_matches_transformers(tmp_path, shape):
    check_parity(tiny_mpt(**shape), tmp_path)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32])
def test_alibi_slopes_match_mpt(heads):
    mpt_bias = build_mpt_alibi_tensor(heads, sequence_length=2)  # [heads, 1, 2]: (−1·slope, 0)
    torch.testing.assert_close(alibi_slopes(heads), -mpt_bias[:, 0, 0], rtol=1e-6, atol=0)


def test_mpt_mlp_is_four_times_wider_whatever_expansion_ratio():
    # transformers' MptMLP ignores expansion_ratio, so checkpoints it writes are always 4 × d_model wide.
    config = config_from_hf(tiny_mpt(**SHAPES["6-heads-ratio-2-untied"]).config.to_dict())
    assert (config.d_ff, config.norm_bias, config.qkv_bias, config.tie_embeddings) == (192, False, False, False)
    with pytest.raises(ConfigError, match="d_ff"):
        config_to_hf(config.replace(d_ff=96))


@pytest.mark.parametrize(
    "change, words",
    [({"attn_config": {"clip_qkv": 6.0}}, "clip_qkv"), ({"attn_config": {"qk_ln": True}}, "qk_ln"),
     ({"attn_config": {"alibi": False}}, "alibi"), ({"attn_config": {"alibi_bias_max": 16}}, "alibi_bias_max"),
     ({"attn_config": {"attn_type": "multiquery_attention"}}, "attn_type"),
     ({"attn_config": {"prefix_lm": True}}, "prefix_lm"), ({"no_bias": False}, "no_bias"),
     ({"logit_scale": 0.5}, "logit_scale"), ({"norm_type": "rmsnorm"}, "norm_type")],
    ids=["clip-qkv", "qk-ln", "no-alibi", "alibi-bias-max", "multi-query", "prefix-lm", "biases", "logit-scale",
         "rmsnorm"],
)
def test_mpt_rejects_unsupported_options(change, words):
    hf = {"model_type": "mpt", "vocab_size": 101, "d_model": 64, "n_heads": 4, "n_layers": 2, **change}
    with pytest.raises(ConfigError, match=words):
        config_from_hf(hf)
