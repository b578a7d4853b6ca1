"""Every attention backend equals the dense SDPA one (the reference) on each part of the attention description."""

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.generate import generate_ids
from llmlab.model import presets
from llmlab.model.attention import BACKENDS, resolve_backend
from llmlab.model.transformer import Model
from llmlab.objectives import GLMBlankInfilling

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

OTHERS = [name for name in BACKENDS if name != "sdpa"]
ATOL = 1e-5


def tiny_model(name: str, **overrides) -> Model:
    """A tiny preset model with fixed weights, in eval mode."""
    torch.manual_seed(0)
    return Model(presets.get(name, "tiny", **overrides)).eval()


def left_padded(vocab_size: int, length: int, pads: int = 4, seed: int = 0):
    """Two rows of random ids; the second is left-padded over its first pads positions."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :pads] = 0
    return ids, mask


def outputs(model: Model, backend: str, **inputs) -> torch.Tensor:
    """The model's logits through one backend, without gradients."""
    with torch.no_grad():
        return model.set_attention_backend(backend)(**inputs).logits


def assert_backend_matches_dense(model: Model, backend: str, keep: torch.Tensor | None = None, **inputs):
    """Logits through backend equal the dense backend's where keep is true (every position when None)."""
    reference, got = outputs(model, "sdpa", **inputs), outputs(model, backend, **inputs)
    model.set_attention_backend("sdpa")
    assert torch.isfinite(got).all()
    keep = torch.ones(reference.shape[:2], dtype=torch.bool) if keep is None else keep.bool()
    assert torch.allclose(got[keep], reference[keep], atol=ATOL), (got[keep] - reference[keep]).abs().max()


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("name, length", [("llama", 9), ("llama", 131), ("bloom", 11), ("mpt", 11)],
                         ids=["llama-gqa", "llama-past-one-block", "bloom-alibi", "mpt-alibi"])
def test_decoder_with_left_padding(backend, name, length):
    model = tiny_model(name)
    ids, mask = left_padded(model.config.vocab_size, length)
    assert_backend_matches_dense(model, backend, keep=mask, input_ids=ids, attention_mask=mask)
    assert_backend_matches_dense(model, backend, input_ids=ids)  # plain causal


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("name", ["t5", "umt5"])
def test_encoder_decoder_relative_buckets_and_cross_attention(backend, name):
    model = tiny_model(name)
    ids, mask = left_padded(model.config.vocab_size, 10, seed=1)
    mask = mask.flip(1)  # right-padded encoder input
    decoder_ids, decoder_mask = left_padded(model.config.vocab_size, 7, pads=2, seed=2)
    decoder_mask = decoder_mask.flip(1)
    assert_backend_matches_dense(model, backend, keep=decoder_mask, input_ids=ids, attention_mask=mask,
                                 decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)


@pytest.mark.parametrize("backend", OTHERS)
def test_sliding_window_layers(backend):
    model = tiny_model("gpt_neo", attn_window=5)
    assert model.config.layer_kinds == ("global", "local")
    ids, mask = left_padded(model.config.vocab_size, 14)
    assert_backend_matches_dense(model, backend, keep=mask, input_ids=ids, attention_mask=mask)
    assert_backend_matches_dense(model, backend, input_ids=ids)


@pytest.mark.parametrize("backend", OTHERS)
def test_prefix_decoder(backend):
    model = tiny_model("prefix_llama")
    ids, _ = left_padded(model.config.vocab_size, 12)
    assert_backend_matches_dense(model, backend, input_ids=ids, prefix_lengths=torch.tensor([3, 8]))


@pytest.mark.parametrize("backend", OTHERS)
def test_glm_blank_infilling_batch(backend):
    model = tiny_model("glm")
    vocab = model.config.vocab_size
    windows = torch.randint(3, vocab - 400, (3, 24), generator=torch.Generator().manual_seed(0))
    batch = GLMBlankInfilling(vocab - 300, vocab - 301, vocab - 302)(windows, torch.Generator().manual_seed(0))
    assert batch["position_ids"].shape[1] == 2 and len(set(batch["prefix_lengths"].tolist())) > 1
    assert_backend_matches_dense(model, backend, input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 prefix_lengths=batch["prefix_lengths"])


@pytest.mark.parametrize("backend", ["sdpa", *OTHERS])
def test_packed_row_equals_its_documents_run_apart(backend):
    model = tiny_model("llama")
    lengths = [(4, 7, 3), (9, 5)]
    generator = torch.Generator().manual_seed(3)
    rows = [[torch.randint(3, 1000, (1, n), generator=generator) for n in row] for row in lengths]
    ids = torch.cat([torch.cat(row, dim=1) for row in rows])
    document_ids = torch.tensor([sum(([d] * n for d, n in enumerate(row)), []) for row in lengths])
    packed = outputs(model, backend, input_ids=ids, document_ids=document_ids)
    for r, row in enumerate(rows):
        start = 0
        for document in row:
            alone = outputs(model, backend, input_ids=document)[0]
            assert torch.allclose(packed[r, start:start + document.shape[1]], alone, atol=ATOL)
            start += document.shape[1]
    if backend != "sdpa":
        assert_backend_matches_dense(model, backend, input_ids=ids, document_ids=document_ids)


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("name, cache, overrides", [
    ("llama", "static", {}), ("llama", "dynamic", {}), ("bloom", "static", {}), ("t5", "static", {}),
    ("umt5", "dynamic", {}), ("gpt_neo", "static", {"attn_window": 4}), ("prefix_llama", "static", {}),
    ("llama", "ragged", {}), ("gpt_neo", "ragged", {"attn_window": 4}),  # a ragged cache attends row by row (sdpa)
], ids=["llama-static", "llama-dynamic", "bloom-static", "t5-static", "umt5-dynamic", "gpt-neo-window-static",
        "prefix-llama-static", "llama-ragged", "gpt-neo-window-ragged"])
def test_cached_greedy_generation_gives_the_same_tokens(backend, name, cache, overrides):
    model = tiny_model(name, eos_token_id=None, **overrides)
    ids, mask = left_padded(model.config.vocab_size, 6, pads=2, seed=4)
    if model.config.arch == "prefix_decoder":
        mask = None  # a prefix decoder's prefix is the whole prompt
    expected = generate_ids(model.set_attention_backend("sdpa"), ids, mask, max_new_tokens=8, cache=cache)
    got = generate_ids(model.set_attention_backend(backend), ids, mask, max_new_tokens=8, cache=cache)
    assert torch.equal(got, expected)


@pytest.mark.gpu
def test_flex_gradients_equal_dense_ones_with_a_learned_relative_bias():
    model = tiny_model("umt5").cuda()
    ids, mask = (t.cuda() for t in left_padded(model.config.vocab_size, 8))
    labels = torch.randint(3, 1000, (2, 5), generator=torch.Generator().manual_seed(5)).cuda()
    grads = {}
    for backend in ("sdpa", "flex"):
        model.zero_grad()
        model.set_attention_backend(backend)(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[backend] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert any("relative_bias" in name for name in grads["flex"])
    assert grads["sdpa"].keys() == grads["flex"].keys()
    for name, grad in grads["sdpa"].items():
        assert torch.allclose(grads["flex"][name], grad, atol=ATOL), name


def test_flex_refuses_to_backpropagate_on_cpu():
    model = tiny_model("llama").set_attention_backend("flex").train()
    with pytest.raises(ConfigError, match="sdpa"):
        model(torch.randint(3, 1000, (1, 6)))


def test_block_mask_is_built_once_per_layer_kind_and_batch(monkeypatch):
    import llmlab.model.flex_attention as flex
    model = tiny_model("umt5", n_layers=3).set_attention_backend("flex")  # a bias per layer, yet one mask per stack
    built = []
    original = flex.create_block_mask
    monkeypatch.setattr(flex, "create_block_mask", lambda *args, **kw: built.append(args[1:]) or original(*args, **kw))
    ids, mask = left_padded(model.config.vocab_size, 8)
    with torch.no_grad():
        model(ids, attention_mask=mask, decoder_input_ids=ids[:, :5])
    assert sorted(built) == [(1, None, 5, 5), (2, None, 5, 8), (2, None, 8, 8)]  # decoder, cross, encoder


def test_fully_masked_queries_stay_finite():
    model = tiny_model("llama").set_attention_backend("flex")
    ids, mask = left_padded(model.config.vocab_size, 9, pads=9)  # the second row is padding only
    with torch.no_grad():
        assert torch.isfinite(model(ids, attention_mask=mask).logits).all()


def test_choosing_a_backend():
    model = tiny_model("llama")
    assert model.attention_backend == "sdpa" and model.set_attention_backend("flex") is model
    known = ", ".join([*BACKENDS, "auto"])  # llmlab.infer registers "native" once imported
    with pytest.raises(ConfigError, match=f"There is no attention backend named 'flash'; choose one of {known}."):
        model.set_attention_backend("flash")
    assert known.startswith("sdpa, flex")
    assert resolve_backend("auto", torch.device("cpu"), dropout=False) is BACKENDS["sdpa"]
    assert resolve_backend("auto", torch.device("cuda"), dropout=False) is BACKENDS["flex"]
    assert resolve_backend("auto", torch.device("cuda"), dropout=True) is BACKENDS["sdpa"]


def test_flex_refuses_attention_dropout_in_training():
    model = tiny_model("llama", dropout=0.1).set_attention_backend("flex").train()
    ids = torch.randint(3, 1000, (1, 6))
    with pytest.raises(ConfigError, match="dropout"), torch.no_grad():
        model(ids)
    model.set_attention_backend("auto")(ids).logits.sum().backward()  # auto is sdpa here


def test_a_bias_without_an_elementwise_form_is_refused():
    from llmlab.model.attention import AttentionSpec

    spec = AttentionSpec(query_index=torch.arange(4)[None], key_count=4, causal=True)
    with pytest.raises(ConfigError, match="score"):
        BACKENDS["flex"].lower(spec, None, (lambda query, key: torch.zeros(1, 1, 4, 4),), torch.float32)
