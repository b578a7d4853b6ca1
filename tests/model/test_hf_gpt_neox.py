"""GPT-NeoX / Pythia: llmlab equals transformers' GPTNeoXForCausalLM (logits, export, generation)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.model.parity import check_parity  # noqa: E402


@pytest.mark.parametrize(
    "rotary_pct, parallel, heads, tied, bias",
    [(0.25, True, 4, False, True), (1.0, True, 4, False, True), (0.25, False, 2, False, True),
     (1.0, False, 8, True, False), (0.5, True, 6, True, True)],
    ids=["pythia-quarter-rotary", "full-rotary-parallel", "quarter-rotary-sequential",
         "full-rotary-sequential-tied-no-bias", "half-rotary-6-heads-tied"],
)
def test_gpt_neox_matches_transformers(tmp_path, rotary_pct, parallel, heads, tied, bias):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=101, hidden_size=48 if heads == 6 else 64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=heads, max_position_embeddings=64, rotary_pct=rotary_pct, rotary_emb_base=500,
        use_parallel_residual=parallel, tie_word_embeddings=tied, attention_bias=bias,
    )
    check_parity(transformers.GPTNeoXForCausalLM(config), tmp_path)


def test_legacy_pythia_config_keys():
    """A Pythia config.json written before rope_parameters existed (rotary_pct, rotary_emb_base)."""
    from llmlab.model.hf.gpt_neox import config_from_hf

    config = config_from_hf({
        "model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 512, "intermediate_size": 2048,
        "num_hidden_layers": 6, "num_attention_heads": 8, "hidden_act": "gelu", "rotary_pct": 0.25,
        "rotary_emb_base": 10000, "use_parallel_residual": True, "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
    })
    assert (config.rotary_dim, config.rope_base, config.parallel_residual, config.parallel_shared_norm) == (
        16, 10000.0, True, False)


def test_unsupported_activation_is_rejected():
    from llmlab.errors import ConfigError
    from llmlab.model.hf.gpt_neox import config_from_hf

    with pytest.raises(ConfigError, match="hidden_act"):
        config_from_hf({"model_type": "gpt_neox", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                        "num_hidden_layers": 1, "num_attention_heads": 2, "hidden_act": "mish"})
