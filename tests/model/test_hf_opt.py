"""OPT: llmlab equals transformers' OPTForCausalLM (logits, export, generation)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.model.parity import check_parity, hf_logits, max_diff_unpadded, our_logits  # noqa: E402


@pytest.mark.parametrize(
    "pre_norm, proj_dim, bias, tied, remove_final_norm",
    [(True, None, True, True, False), (False, 32, True, True, False), (True, None, False, False, False),
     (True, 48, True, True, True)],
    ids=["pre-ln-125m-style", "post-ln-350m-style-projected", "no-bias-untied", "pre-ln-projected-no-final-norm"],
)
def test_opt_matches_transformers(tmp_path, pre_norm, proj_dim, bias, tied, remove_final_norm):
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=99, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, do_layer_norm_before=pre_norm, word_embed_proj_dim=proj_dim, enable_bias=bias,
        tie_word_embeddings=tied, _remove_final_layer_norm=remove_final_norm, pad_token_id=1, bos_token_id=2,
        eos_token_id=2,
    )
    check_parity(transformers.OPTForCausalLM(config), tmp_path)


def test_opt_left_padding_takes_positions_from_the_mask(tmp_path):
    """Left-padded rows start their learned positions after the padding, as OPT computes them from the mask."""
    import llmlab

    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=99, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                    num_attention_heads=2, max_position_embeddings=64)
    hf_model = transformers.OPTForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path)
    ids = torch.randint(3, 99, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    model = llmlab.load(tmp_path)
    assert max_diff_unpadded(our_logits(model, ids, mask), hf_logits(hf_model, ids, mask), mask) <= 1e-4
    with torch.no_grad():
        expected = hf_model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=8), expected)


def test_opt_350m_config_maps_to_post_ln_with_projections():
    """facebook/opt-350m's config.json: post-LN blocks, no final norm, 512-wide embeddings projected to 1024."""
    from llmlab.model.hf.opt import config_from_hf

    config = config_from_hf({
        "model_type": "opt", "vocab_size": 50272, "hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "max_position_embeddings": 2048, "do_layer_norm_before": False,
        "word_embed_proj_dim": 512, "activation_function": "relu", "enable_bias": True,
        "layer_norm_elementwise_affine": True, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
    })
    assert (config.norm_placement, config.final_norm, config.embed_proj_dim, config.position_offset) == (
        "post", False, 512, 2)


def test_norm_without_affine_parameters_is_rejected():
    from llmlab.errors import ConfigError
    from llmlab.model.hf.opt import config_from_hf

    with pytest.raises(ConfigError, match="layer_norm_elementwise_affine"):
        config_from_hf({"model_type": "opt", "vocab_size": 10, "hidden_size": 8, "ffn_dim": 16,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "layer_norm_elementwise_affine": False})
