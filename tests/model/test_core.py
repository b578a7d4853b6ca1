"""The model's components against formulas worked by hand or written out naively."""

import math

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model import Model, ModelConfig
from llmlab.model.attention import BACKENDS
from llmlab.model.positions import alibi_slopes, relative_bucket, sinusoidal_table

TINY = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)


def tiny(**changes) -> Model:
    torch.manual_seed(0)
    return Model(ModelConfig(**{**TINY, **changes})).eval()


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 12 heads: the 8 slopes of 2^(-8/8·i), then every other slope of the 16-head sequence 2^(-8/16·i).
    expected = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** (-0.5 * k) for k in (1, 3, 5, 7)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(expected))


def test_relative_buckets_match_t5_reference():
    transformers = pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 40)[:, None]
    for bidirectional in (True, False):
        expected = T5Attention._relative_position_bucket(relative, bidirectional, 32, 128)
        assert torch.equal(relative_bucket(relative, bidirectional, 32, 128), expected)


def test_sinusoidal_table_formula():
    table = sinusoidal_table(10, 8)
    pos, i = 7, 1
    assert table[pos, i].item() == pytest.approx(math.sin(pos / 10000 ** (i / 4)), abs=1e-6)
    assert table[pos, 4 + i].item() == pytest.approx(math.cos(pos / 10000 ** (i / 4)), abs=1e-6)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_rotates_pairs_by_position_times_frequency(layout):
    from llmlab.model.positions import Rotary

    config = ModelConfig(**{**TINY, "position": "rope", "rope_layout": layout, "head_dim": 4, "n_heads": 1,
                            "d_model": 4})
    rotary = Rotary(config)
    x = torch.randn(1, 1, 1, 4)
    position = 5
    cos, sin = rotary.cos_sin(torch.tensor([[position]]))
    out = rotary.rotate(x, cos, sin)[0, 0, 0]
    pairs = [(0, 2), (1, 3)] if layout == "half" else [(0, 1), (2, 3)]
    for k, (a, b) in enumerate(pairs):
        angle = position * 10000 ** (-2 * k / 4)
        xa, xb = x[0, 0, 0, a].item(), x[0, 0, 0, b].item()
        assert out[a].item() == pytest.approx(xa * math.cos(angle) - xb * math.sin(angle), abs=1e-5)
        assert out[b].item() == pytest.approx(xb * math.cos(angle) + xa * math.sin(angle), abs=1e-5)


def naive_attention(q, k, v, allowed, scale):
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("kind", ["causal", "window", "prefix", "gqa"])
def test_attention_layer_equals_naive_softmax(kind):
    changes = {"position": "none", "n_kv_heads": 2 if kind == "gqa" else None}
    if kind == "window":
        changes["attn_window"] = 3
    if kind == "prefix":
        changes["arch"] = "prefix_decoder"
    model = tiny(**changes)
    block = model.decoder.blocks[0]
    x = torch.randn(2, 7, 32)
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    allowed = (j <= i)[None, None].expand(2, 1, 7, 7)
    prefix = torch.tensor([3, 5])
    if kind == "window":
        allowed = allowed & ((i - j) < 3)
    if kind == "prefix":
        allowed = allowed | (j[None, None] < prefix[:, None, None, None])
    from llmlab.model.attention import AttentionSpec
    spec = AttentionSpec(query_index=torch.arange(7)[None], key_count=7, causal=True,
                         prefix_lengths=prefix if kind == "prefix" else None)
    backend = BACKENDS["sdpa"]
    got = block.attn(x, backend.lower(spec, 3 if kind == "window" else None, (), torch.float32), backend)
    attn = block.attn
    q, k, v = attn.project(x)
    k = k.repeat_interleave(4 // attn.n_kv_heads, dim=1)
    v = v.repeat_interleave(4 // attn.n_kv_heads, dim=1)
    reference = attn.o(naive_attention(q, k, v, allowed, 1 / math.sqrt(8)).transpose(1, 2).flatten(2))
    assert torch.allclose(got, reference, atol=1e-5)


def test_prefix_decoder_sees_whole_prefix_but_not_the_future():
    model = tiny(arch="prefix_decoder", position="rope")
    ids = torch.randint(0, 61, (1, 8))
    changed_prefix = ids.clone()
    changed_prefix[0, 3] = (ids[0, 3] + 1) % 61
    changed_suffix = ids.clone()
    changed_suffix[0, 6] = (ids[0, 6] + 1) % 61
    prefix = torch.tensor([4])
    base = model(ids, prefix_lengths=prefix).logits
    assert not torch.allclose(model(changed_prefix, prefix_lengths=prefix).logits[0, 0], base[0, 0])
    assert torch.allclose(model(changed_suffix, prefix_lengths=prefix).logits[0, :6], base[0, :6], atol=1e-6)


@pytest.mark.parametrize("changes", [
    dict(position="learned"),
    dict(position="rope", rope_fraction=0.5, n_kv_heads=2, norm="rmsnorm", mlp="swiglu"),
    dict(position="alibi", n_heads=4),
    dict(position="learned", layer_kinds=("global", "local"), attn_window=3),
    dict(position="sinusoidal", norm_placement="post"),
    dict(position="rope", norm_placement="sandwich", parallel_residual=False),
    dict(position="rope", parallel_residual=True, parallel_shared_norm=False),
    dict(arch="encoder_decoder", position="relative", norm="rmsnorm", decoder_start_token_id=0),
    dict(arch="encoder_decoder", position="relative", relative_per_layer=True, decoder_start_token_id=0),
    dict(position="rope", n_experts=4, moe_router="topk", moe_top_k=2, capacity_factor=1.5),
    dict(arch="prefix_decoder", position="rope"),
], ids=["learned", "rope-gqa", "alibi", "local", "sinusoid-post", "sandwich", "parallel", "t5", "umt5", "moe",
        "prefix"])
def test_kv_cache_generation_equals_recomputation(changes):
    model = tiny(**changes)
    prompt = torch.randint(0, 61, (2, 5))
    cached = model.generate(prompt, max_new_tokens=12)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=12, use_cache=False))


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_left_padded_batch_generates_like_each_row_alone(position):
    model = tiny(position=position)
    short, long = torch.randint(0, 61, (1, 3)), torch.randint(0, 61, (1, 6))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(together[0, 3:], model.generate(short, max_new_tokens=8)[0])
    assert torch.equal(together[1], model.generate(long, max_new_tokens=8)[0])


def test_post_ln_and_deepnorm_follow_the_formula():
    model = tiny(norm_placement="post", residual_scale=2.0, position="none", n_layers=1, final_norm=False)
    block = model.decoder.blocks[0]
    x = torch.randn(1, 5, 32)
    causal = (None, True)  # the dense backend's lowering of plain causal attention
    backend = BACKENDS["sdpa"]
    h = block.attn_norm(2.0 * x + block.attn(x, causal, backend))
    expected = block.mlp_norm(2.0 * h + block.mlp(h))
    got, _ = block(x, causal, backend)
    assert torch.allclose(got, expected, atol=1e-6)


def test_loss_is_shifted_cross_entropy():
    model = tiny(position="learned")
    ids = torch.randint(0, 61, (2, 9))
    out = model(ids, labels=ids)
    logp = out.logits[:, :-1].log_softmax(-1)
    manual = -logp.gather(-1, ids[:, 1:, None]).mean()
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_config_round_trips_through_json():
    config = ModelConfig(**TINY, layer_kinds=("global", "local"), attn_window=4)
    import json
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("changes, words", [
    (dict(d_model=30, n_heads=4), ["d_model", "n_heads"]),
    (dict(n_heads=4, n_kv_heads=3), ["n_heads", "n_kv_heads"]),
    (dict(position="rope", rope_fraction=1.5), ["rope_fraction"]),
    (dict(layer_kinds=("global", "local")), ["layer_kinds", "attn_window"]),
    (dict(norm="batchnorm"), ["norm"]),
    (dict(position="glm2d"), ["glm2d", "prefix_decoder"]),
    (dict(n_experts=4, moe_top_k=5, moe_router="topk"), ["moe_top_k", "n_experts"]),
])
def test_conflicting_fields_are_named(changes, words):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**{**TINY, **changes})
    for word in words:
        assert word in str(error.value)


def test_unknown_config_field_is_named():
    with pytest.raises(ConfigError, match="n_layerz"):
        ModelConfig.from_dict({**TINY, "n_layerz": 3})


def test_prefix_decoder_generation_attends_bidirectionally_over_the_prompt():
    model = tiny(arch="prefix_decoder", position="rope")
    prompt = torch.randint(0, 61, (1, 6))
    generated = model.generate(prompt, max_new_tokens=1)
    logits = model(prompt, prefix_lengths=torch.tensor([6])).logits
    assert generated[0, -1].item() == logits[0, -1].argmax().item()
    causal_logits = model(prompt).logits
    assert not torch.allclose(logits[0, 0], causal_logits[0, 0])


def test_the_model_needs_no_inference_code_until_generate_is_called():
    import subprocess
    import sys

    script = ("import sys, torch\n"
              "from llmlab.errors import ConfigError\n"
              "from llmlab.model import Model, presets\n"
              "assert not any(name.startswith('llmlab.infer') for name in sys.modules)\n"
              "model = Model(presets.llama('tiny', vocab_size=50, d_model=32, n_layers=1, n_heads=2, d_ff=64))\n"
              "try:\n    model.generate(torch.tensor([[1, 2]]))\nexcept ConfigError as error:\n    print(error)\n"
              "import llmlab.infer\n"
              "print(tuple(model.generate(torch.tensor([[1, 2]]), max_new_tokens=3).shape))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "Model.generate is llmlab.infer's generation; import llmlab.infer (llmlab.load does) before calling it.",
        "(1, 5)"]
