"""Switch Transformers: llmlab equals transformers' SwitchTransformersForConditionalGeneration, dropping included."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf import t5  # noqa: E402
from tests.model.parity import check_parity  # noqa: E402
from tests.model.test_hf_t5 import vary_generation  # noqa: E402

TINY = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            num_experts=4, expert_capacity=64, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
            decoder_start_token_id=0, eos_token_id=None, relative_attention_num_buckets=8,
            relative_attention_max_distance=16)


def build(**changes):
    """A tiny random Switch model with routers sharp enough that tokens spread over several experts."""
    torch.manual_seed(0)
    model = transformers.SwitchTransformersForConditionalGeneration(
        transformers.SwitchTransformersConfig(**{**TINY, **changes}))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "router.classifier" in name:
                parameter.normal_(0.0, 1.0)
    return vary_generation(model)


def count_dropped_tokens(model) -> dict:
    """Hook every transformers router; the dict counts tokens it left without an expert (over its capacity)."""
    dropped = {"tokens": 0}

    def hook(module, inputs, outputs):
        expert_index = outputs[0]
        dropped["tokens"] += int((expert_index.sum(-1) == 0).sum())
    for module in model.modules():
        if isinstance(module, transformers.models.switch_transformers.modeling_switch_transformers
                      .SwitchTransformersTop1Router):
            module.register_forward_hook(hook)
    return dropped


@pytest.mark.parametrize("changes, moe_every", [
    (dict(), 2),
    (dict(num_sparse_encoder_layers=2, num_sparse_decoder_layers=2, dense_act_fn="gelu_new"), 1),
    (dict(num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
          router_bias=True), 2),
], ids=["step2", "step1-gelu", "4layers-step2-bias"])
def test_switch_matches_transformers(tmp_path, changes, moe_every):
    model = build(**changes)
    dropped = count_dropped_tokens(model)
    ours = check_parity(model, tmp_path)
    assert ours.config.moe_every == moe_every and ours.config.expert_capacity == 64
    sparse = [i for i, block in enumerate(model.encoder.block) if block.is_sparse]
    assert sparse == [i for i in range(len(model.encoder.block)) if ours.config.is_moe_layer(i)]
    assert dropped["tokens"] == 0


@pytest.mark.parametrize("capacity", [1, 3])
def test_switch_drops_tokens_over_capacity_like_transformers(tmp_path, capacity):
    model = build(expert_capacity=capacity, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2)
    dropped = count_dropped_tokens(model)
    # the KV cache routes one new token at a time, full recomputation all of them: capacity drops differ by design
    check_parity(model, tmp_path, recompute=False)
    assert dropped["tokens"] > 0


def test_switch_untied_head_and_embeddings_match_transformers(tmp_path):
    # untied, transformers 5 gives each stack its own embedding; llmlab loads them when they hold the same values
    model = build(tie_word_embeddings=False)
    with torch.no_grad():
        model.encoder.embed_tokens.weight.copy_(model.shared.weight)
        model.decoder.embed_tokens.weight.copy_(model.shared.weight)
    ours = check_parity(model, tmp_path)
    assert not ours.config.tie_embeddings and ours.config.head_input_scale == 1.0


def test_switch_unsupported_options_raise_config_error():
    base = {**transformers.SwitchTransformersConfig(**TINY).to_dict(), "model_type": "switch_transformers"}
    with pytest.raises(ConfigError, match="router_dtype"):
        t5.config_from_hf({**base, "router_dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="dense_act_fn"):
        t5.config_from_hf({**base, "dense_act_fn": "gated-gelu"})
    with pytest.raises(ConfigError, match="sparse step"):  # encoder step 3, decoder step 2
        t5.config_from_hf({**base, "num_layers": 3})
    config = t5.config_from_hf(base)
    with pytest.raises(ConfigError, match="moe_every"):
        t5.config_to_hf(config.replace(moe_every=3))
    with pytest.raises(ConfigError, match="mlp"):
        t5.config_to_hf(config.replace(mlp="swiglu"))
