"""GPT-Neo: llmlab equals transformers' GPTNeoForCausalLM, local windows shorter than the sequence included."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.gpt_neo import config_from_hf  # noqa: E402
from tests.model.parity import check_parity  # noqa: E402

TOKENS = {"bos_token_id": 96, "eos_token_id": 96}  # the last id, as <|endoftext|> is in the real vocabularies


@pytest.mark.parametrize(
    "attention_types, heads, width, window, inner",
    [([[["global", "local"], 1]], 4, 64, 4, None),
     ([[["local"], 2]], 2, 32, 4, 96),
     ([[["global", "local"], 2]], 8, 64, 5, None),
     ([[["local", "global", "global"], 1]], 6, 48, 3, 72),
     ([[["global"], 2]], 4, 32, 256, None)],
    ids=["global-local-w4", "all-local-w4", "4L-alternating-w5", "local-global-global-w3", "all-global"],
)
def test_gpt_neo_matches_transformers(tmp_path, attention_types, heads, width, window, inner):
    torch.manual_seed(0)
    layers = sum(len(pattern) * repeats for pattern, repeats in attention_types)
    config = transformers.GPTNeoConfig(
        vocab_size=97, **TOKENS, max_position_embeddings=40, hidden_size=width, num_layers=layers, num_heads=heads,
        attention_types=attention_types, window_size=window, intermediate_size=inner,
    )
    model = check_parity(transformers.GPTNeoForCausalLM(config), tmp_path)
    assert model.config.attn_scale == 1.0
    assert [model.config.layer_kind(i) for i in range(layers)] == config.attention_layers


def test_gpt_neo_layer_count_mismatch_is_rejected():
    hf = transformers.GPTNeoConfig(vocab_size=97, **TOKENS, hidden_size=32, num_layers=2, num_heads=4,
                                   attention_types=[[["global", "local"], 1]]).to_dict()
    hf["num_layers"] = 3
    with pytest.raises(ConfigError, match="attention_types"):
        config_from_hf(hf)
