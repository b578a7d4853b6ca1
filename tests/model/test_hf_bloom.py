"""BLOOM: llmlab equals transformers' BloomForCausalLM (logits, export, generation), ALiBi for any head count."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.model.parity import check_parity  # noqa: E402


@pytest.mark.parametrize(
    "heads, hidden, tied",
    [(4, 64, True), (6, 48, True), (12, 48, False)],
    ids=["4-heads", "6-heads-non-power-of-2", "12-heads-non-power-of-2-untied"],
)
def test_bloom_matches_transformers(tmp_path, heads, hidden, tied):
    torch.manual_seed(0)
    config = transformers.BloomConfig(
        vocab_size=103, hidden_size=hidden, n_layer=2, n_head=heads, tie_word_embeddings=tied,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )
    check_parity(transformers.BloomForCausalLM(config), tmp_path)


def test_alibi_slopes_match_transformers():
    """Our ALiBi slopes equal BLOOM's for power-of-2 and other head counts."""
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    from llmlab.model.positions import alibi_slopes

    for heads in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 112):
        torch.testing.assert_close(alibi_slopes(heads), _get_alibi_slopes(heads, torch.device("cpu")))


def test_residual_after_layernorm_is_rejected():
    from llmlab.errors import ConfigError
    from llmlab.model.hf.bloom import config_from_hf

    with pytest.raises(ConfigError, match="apply_residual_connection_post_layernorm"):
        config_from_hf({"model_type": "bloom", "vocab_size": 10, "hidden_size": 8, "n_layer": 1, "n_head": 2,
                        "apply_residual_connection_post_layernorm": True})
