"""T5 v1.0 / v1.1 / Flan-T5, mT5 and UMT5: llmlab equals transformers' *ForConditionalGeneration."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402
from llmlab.errors import CheckpointError, ConfigError  # noqa: E402
from llmlab.model.hf import t5  # noqa: E402
from tests.model.parity import check_parity, max_diff_unpadded, perturb_vectors, right_padded_batch  # noqa: E402

TINY = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
            eos_token_id=None, relative_attention_num_buckets=8, relative_attention_max_distance=16)


def vary_generation(model):
    """Shrink the token embedding and grow the other matrices, so greedy decoding stops copying its last token."""
    with torch.no_grad():
        model.shared.weight.mul_(0.1)
        for name, parameter in model.named_parameters():
            kept = ("shared", "embed_tokens", "lm_head", "relative", "router")
            if parameter.ndim == 2 and not any(part in name for part in kept):
                parameter.mul_(3.0)
    return perturb_vectors(model)


def build(model_class, config_class, untie: bool = False, **changes):
    """A tiny random model; untie gives it a head of its own, as real v1.1 / mT5 / Flan-T5 checkpoints have."""
    torch.manual_seed(0)
    model = model_class(config_class(**{**TINY, **changes}))
    if untie:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * model.config.d_model ** -0.5)
    return vary_generation(model)


def assert_export_reloads_in_llmlab(model, export_dir):
    """Our HF export (config.json as real checkpoints write it) loads back into llmlab with the same logits."""
    ids, mask = right_padded_batch(model.config.vocab_size)
    decoder_ids = ids[:, :7]
    reloaded = llmlab.load(export_dir)
    assert reloaded.config == model.config
    with torch.no_grad():
        diff = (reloaded(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
                - model(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits).abs().max().item()
    assert diff == 0.0


@pytest.mark.parametrize("changes, generate", [
    (dict(num_layers=3, num_decoder_layers=2), True),
    (dict(d_model=48, d_kv=16, num_heads=4), True),
    (dict(d_model=48, d_kv=8, num_heads=5, relative_attention_num_buckets=32, relative_attention_max_distance=128),
     True),
    # transformers sizes its generation cache by num_layers, so it cannot generate with more decoder layers
    (dict(num_layers=1, num_decoder_layers=3), False),
], ids=["enc3-dec2", "dkv16", "heads5-dkv8", "enc1-dec3"])
def test_t5_v1_0_tied_matches_transformers(tmp_path, changes, generate):
    model = build(transformers.T5ForConditionalGeneration, transformers.T5Config, **changes)
    ours = check_parity(model, tmp_path, generate=generate)
    assert ours.config.tie_embeddings and ours.config.head_input_scale == pytest.approx(model.config.d_model ** -0.5)
    assert ours.config.mlp == "relu"


@pytest.mark.parametrize("changes", [
    dict(d_kv=12),
    dict(num_layers=3, num_decoder_layers=2, d_model=48, num_heads=6, d_kv=8),
    dict(feed_forward_proj="gated-silu", d_kv=6, num_heads=3),
], ids=["dkv12", "enc3-dec2", "gated-silu"])
def test_t5_v1_1_untied_matches_transformers(tmp_path, changes):
    changes = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, **changes}
    model = build(transformers.T5ForConditionalGeneration, transformers.T5Config, untie=True, **changes)
    ours = check_parity(model, tmp_path)
    assert not ours.config.tie_embeddings and ours.config.head_input_scale == 1.0
    assert ours.config.mlp == ("geglu_tanh" if changes["feed_forward_proj"] == "gated-gelu" else "swiglu")
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["tie_word_embeddings"] is False
    assert_export_reloads_in_llmlab(ours, tmp_path / "export")


def test_t5_v1_1_config_without_own_head_is_tied_but_unscaled(tmp_path):
    # transformers 5 always ties T5's head; tie_word_embeddings=False then only switches off the rescale
    model = build(transformers.T5ForConditionalGeneration, transformers.T5Config, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
    ours = check_parity(model, tmp_path)
    assert ours.config.tie_embeddings and ours.config.head_input_scale == 1.0


@pytest.mark.parametrize("untie, changes", [
    (True, dict()),
    (False, dict(num_layers=3, num_decoder_layers=2, d_kv=12)),
], ids=["untied", "tied-enc3-dec2"])
def test_mt5_matches_transformers(tmp_path, untie, changes):
    model = build(transformers.MT5ForConditionalGeneration, transformers.MT5Config, untie=untie, **changes)
    ours = check_parity(model, tmp_path)
    assert ours.config.tie_embeddings is not untie and ours.config.head_input_scale == 1.0


@pytest.mark.parametrize("untie, changes", [
    (False, dict()),
    (True, dict(num_layers=3, num_decoder_layers=2, d_kv=12, d_model=48)),
    (False, dict(feed_forward_proj="relu", num_heads=6)),
], ids=["tied", "untied-enc3-dec2", "relu-heads6"])
def test_umt5_matches_transformers(tmp_path, untie, changes):
    model = build(transformers.UMT5ForConditionalGeneration, transformers.UMT5Config, untie=untie, **changes)
    ours = check_parity(model, tmp_path)
    assert ours.config.relative_per_layer
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["tie_word_embeddings"] is not untie and exported["scale_decoder_outputs"] is True
    # a decoder batch without a mask takes the plain causal path, where each layer's own bias must keep causality
    ids, mask = right_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :8]).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=ids[:, :8]).logits
    assert max_diff_unpadded(got, expected, torch.ones(2, 8)) <= 1e-4


def test_unsupported_options_raise_config_error():
    base = {**transformers.T5Config(**TINY).to_dict(), "model_type": "t5"}
    del base["dense_act_fn"], base["is_gated_act"]  # derived from feed_forward_proj unless stored
    with pytest.raises(ConfigError, match="dense_act_fn"):
        t5.config_from_hf({**base, "feed_forward_proj": "gated-mish"})
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        t5.config_from_hf({**base, "feed_forward_proj": "double-gelu"})
    assert t5.config_from_hf({**base, "feed_forward_proj": "gated-gelu"}).mlp == "geglu_tanh"
    assert t5.config_from_hf({**base, "feed_forward_proj": "gated-gelu_python"}).mlp == "geglu"
    stored = {**base, "feed_forward_proj": "gated-gelu", "dense_act_fn": "relu", "is_gated_act": False}
    assert t5.config_from_hf(stored).mlp == "relu"
    mt5 = t5.config_from_hf({**base, "model_type": "mt5"})
    with pytest.raises(ConfigError, match="head_input_scale"):  # transformers' mT5 never rescales the head input
        t5.config_to_hf(mt5.replace(head_input_scale=0.5))
    with pytest.raises(ConfigError, match="qkv_bias"):
        t5.config_to_hf(mt5.replace(qkv_bias=True))


def test_different_encoder_and_decoder_embeddings_are_rejected(tmp_path):
    model = build(transformers.T5ForConditionalGeneration, transformers.T5Config)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
    state["decoder.embed_tokens.weight"] = state["shared.weight"] + 1
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="encoder and decoder token embeddings"):
        llmlab.load(tmp_path)
