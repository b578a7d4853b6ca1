"""DeepNorm (Wang et al. 2022): the paper's constants and the β-scaled initialisation of the residual branches."""

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model import presets
from llmlab.model.config import ModelConfig
from llmlab.model.transformer import Model

BASE = dict(vocab_size=64, d_model=32, n_layers=6, n_heads=4, d_ff=64, max_seq_len=16)


def test_constants_are_the_papers_for_six_layers():
    config = presets.deepnorm(ModelConfig(**BASE))
    assert config.norm_placement == "post"
    assert config.residual_scale == pytest.approx(12 ** 0.25)  # α = (2N)^(1/4) = 1.8612
    assert config.init_branch_gain == pytest.approx(48 ** -0.25)  # β = (8N)^(-1/4) = 0.3800
    assert config.residual_scale == pytest.approx(1.8612, abs=1e-4)


@pytest.mark.parametrize("fields", [dict(mlp="swiglu", norm="rmsnorm"), dict(fused_qkv=True)])
def test_value_output_and_feed_forward_weights_start_beta_times_smaller(fields):
    plain = ModelConfig(**BASE, **fields, norm_placement="post")
    deep = plain.replace(init_branch_gain=0.38)
    torch.manual_seed(0)
    reference = Model(plain).state_dict()
    torch.manual_seed(0)
    scaled = Model(deep).state_dict()
    v_width = plain.kv_heads * plain.dim_head
    for name, weight in reference.items():
        expected = weight
        if name.endswith((".o.weight", ".v.weight", ".up.weight", ".down.weight", ".gate.weight")):
            expected = weight * 0.38
        elif name.endswith(".qkv.weight"):  # only the value rows of a fused projection
            expected = torch.cat([weight[:-v_width], weight[-v_width:] * 0.38])
        torch.testing.assert_close(scaled[name], expected, rtol=0, atol=0, msg=name)


def test_encoder_decoder_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="one residual scale per stack"):
        presets.deepnorm(ModelConfig(**BASE, arch="encoder_decoder"))
