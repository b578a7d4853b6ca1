"""GPT-J: llmlab equals transformers' GPTJForCausalLM, with partial and full interleaved rotary embeddings."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.gptj import config_from_hf  # noqa: E402
from tests.model.parity import check_parity  # noqa: E402

TOKENS = {"bos_token_id": 96, "eos_token_id": 96}  # the last id, as <|endoftext|> is in the real vocabularies


@pytest.mark.parametrize(
    "heads, width, rotary_dim, inner, tied",
    [(4, 64, 4, None, False), (2, 32, 16, 48, False), (4, 48, 12, None, False), (8, 64, 8, 96, True),
     (2, 88, 30, 64, False)],
    ids=["4h-rot4of16", "2h-full-rot16", "4h-full-rot12", "8h-full-rot8-tied", "2h-rot30of44"],
)
def test_gptj_matches_transformers(tmp_path, heads, width, rotary_dim, inner, tied):
    torch.manual_seed(0)
    config = transformers.GPTJConfig(
        vocab_size=97, **TOKENS, n_positions=32, n_embd=width, n_layer=2, n_head=heads, rotary_dim=rotary_dim,
        n_inner=inner, tie_word_embeddings=tied,
    )
    hf_model = transformers.GPTJForCausalLM(config)
    torch.nn.init.normal_(hf_model.lm_head.bias, std=0.1)  # random init leaves it zero, which would hide a mix-up
    model = check_parity(hf_model, tmp_path)
    assert model.config.rotary_dim == rotary_dim


@pytest.mark.parametrize("rotary_dim", [0, 7, 24])
def test_gptj_impossible_rotary_dim_is_rejected(rotary_dim):
    hf = transformers.GPTJConfig(vocab_size=97, **TOKENS, n_embd=64, n_layer=2, n_head=4, rotary_dim=4).to_dict()
    hf["rotary_dim"] = rotary_dim
    with pytest.raises(ConfigError, match="rotary_dim"):
        config_from_hf(hf)
