"""GPT-2: llmlab equals transformers' GPT2LMHeadModel (logits, export, generation); unsupported options fail."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402
from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.gpt2 import config_from_hf  # noqa: E402
from tests.model.parity import check_parity  # noqa: E402

TOKENS = {"bos_token_id": 96, "eos_token_id": 96}  # the last id, as <|endoftext|> is in the real vocabularies


@pytest.mark.parametrize(
    "layers, heads, width, inner, activation, tied",
    [(2, 4, 64, None, "gelu_new", True), (3, 6, 48, 80, "gelu_new", True), (2, 2, 32, 96, "gelu", False),
     (3, 8, 64, None, "relu", True)],
    ids=["2L-4h-default-inner", "3L-6h-inner80", "2L-2h-exact-gelu-untied", "3L-8h-relu"],
)
def test_gpt2_matches_transformers(tmp_path, layers, heads, width, inner, activation, tied):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=97, **TOKENS, n_positions=32, n_embd=width, n_layer=layers, n_head=heads, n_inner=inner,
        activation_function=activation, tie_word_embeddings=tied,
    )
    check_parity(transformers.GPT2LMHeadModel(config), tmp_path)


def test_gpt2_without_attention_scaling_matches_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, **TOKENS, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                     scale_attn_weights=False)
    model = check_parity(transformers.GPT2LMHeadModel(config), tmp_path)
    assert model.config.attn_scale == 1.0


@pytest.mark.parametrize(
    "option", ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"],
)
def test_gpt2_unsupported_options_are_rejected(option):
    hf = transformers.GPT2Config(vocab_size=97, **TOKENS, n_embd=32, n_layer=2, n_head=4, **{option: True}).to_dict()
    with pytest.raises(ConfigError, match=option):
        config_from_hf(hf)


def test_gpt2_unsupported_activation_is_rejected(tmp_path):
    config = transformers.GPT2Config(vocab_size=97, **TOKENS, n_embd=32, n_layer=2, n_head=4,
                                     activation_function="quick_gelu")
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="activation_function"):
        llmlab.load(tmp_path)


def test_gpt2_loads_original_openai_layout(tmp_path):
    """The hub's gpt2 checkpoints store GPT2Model keys without 'transformer.' plus the old causal-mask buffers."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, **TOKENS, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    tmp_path.mkdir(exist_ok=True)
    config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        expected = hf_model(ids).logits
        ours = llmlab.load(tmp_path)(ids).logits
    assert (ours - expected).abs().max().item() <= 1e-4
