"""LLaMA: llmlab equals transformers' LlamaForCausalLM (logits, export, generation)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.model.parity import check_parity  # noqa: E402


@pytest.mark.parametrize(
    "heads, kv_heads, tied, bias",
    [(4, 4, False, False), (4, 2, True, False), (6, 1, False, True), (8, 2, False, False)],
    ids=["mha-untied", "gqa2-tied", "mqa-bias", "gqa4"],
)
def test_llama_matches_transformers(tmp_path, heads, kv_heads, tied, bias):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=48 if heads == 6 else 64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=64,
        tie_word_embeddings=tied, attention_bias=bias, rms_norm_eps=1e-5,
    )
    check_parity(transformers.LlamaForCausalLM(config), tmp_path)
