"""GPT-2: llmlab equals transformers' GPT2LMHeadModel (logits, export, generation); unsupported options fail."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402
from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.gpt2 import config_from_hf  # noqa: E402
from tests.model.parity import check_parity  # noqa: E402


@pytest.mark.parametrize(
    "layers, heads, width, inner, activation, tied",
    [(2, 4, 64, None, "gelu_new", True), (3, 6, 48, 80, "gelu_new", True), (2, 2, 32, 96, "gelu", False),
     (3, 8, 64, None, "relu", True)],
    ids=["2L-4h-default-inner", "3L-6h-inner80", "2L-2h-exact-gelu-untied", "3L-8h-relu"],
)
def test_gpt2_matches_transformers(tmp_path, layers, heads, width, inner, activation, tied):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=width, n_layer=layers, n_head=heads, n_inner=inner,
        activation_function=activation, tie_word_embeddings=tied,
    )
    check_parity(transformers.GPT2LMHeadModel(config), tmp_path)


def test_gpt2_without_attention_scaling_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                     scale_attn_weights=False)
    model = check_parity(transformers.GPT2LMHeadModel(config), tmp_path)
    assert model.config.attn_scale == 1.0


@pytest.mark.parametrize(
    "option", ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"],
)
def test_gpt2_unsupported_options_are_rejected(option):
    hf = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, **{option: True}).to_dict()
    with pytest.raises(ConfigError, match=option):
        config_from_hf(hf)


def test_gpt2_unsupported_activation_is_rejected(tmp_path):
    config = transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, activation_function="quick_gelu")
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="activation_function"):
        llmlab.load(tmp_path)
