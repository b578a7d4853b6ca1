"""The native decode attention kernel against float64 SDPA per row, the "native" backend against the dense one (and
the cases it leaves to it), and prepack choosing it: the same logits and tokens as sdpa for every cache."""

import pytest
import torch
import torch.nn.functional as F

from llmlab.infer import native
from llmlab.infer.cache import RaggedCache
from llmlab.infer.config import GenerationConfig
from llmlab.infer.decode_attention import BACKEND, KERNEL
from llmlab.infer.generate import generate
from llmlab.infer.prepack import prepack, unpack
from llmlab.model.attention import BACKENDS, DenseAttention, resolve_backend
from tests.infer.test_generate import PROMPTS, tiny_model

available = native.load(KERNEL) and native.load("blocked_linear")
needs_kernel = pytest.mark.skipif(not available, reason=f"no native kernel here: {native.unavailable_reason(KERNEL)}")


def reference(q: torch.Tensor, keys: list, values: list, scale: float) -> torch.Tensor:
    """Each row's attention by SDPA in float64, over that row's own keys and values."""
    rows = [F.scaled_dot_product_attention(q[r:r + 1].double(), k.double(), v.double(), scale=scale,
                                           enable_gqa=k.shape[1] != q.shape[1]) for r, (k, v) in
            enumerate(zip(keys, values))]
    return torch.cat(rows).float()


def ragged_rows(lengths: list, kv_heads: int, dim: int, generator: torch.Generator) -> tuple[list, list]:
    """Per-row views [1, kv_heads, length, dim] of two shared buffers, with gaps between the rows (a ragged cache)."""
    total = sum(lengths) + 3 * len(lengths)
    key_buffer, value_buffer = (torch.randn(kv_heads, total, dim, generator=generator) for _ in range(2))
    starts = [sum(lengths[:i]) + 3 * i for i in range(len(lengths))]
    return ([key_buffer[None, :, s:s + n] for s, n in zip(starts, lengths)],
            [value_buffer[None, :, s:s + n] for s, n in zip(starts, lengths)])


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,dim,lengths", [
    (12, 12, 64, [1, 33, 160]),  # GPT-2's heads; a row with only the new key
    (16, 4, 128, [7, 200]),  # grouped-query
    (8, 1, 24, [5]),  # multi-query, a head width that is not whole vectors
    (4, 2, 80, [3, 1000, 17]),  # rows long enough to be split between threads
])
def test_the_kernel_equals_float64_sdpa_over_each_rows_own_keys(heads, kv_heads, dim, lengths):
    generator = torch.Generator().manual_seed(heads * dim)
    keys, values = ragged_rows(lengths, kv_heads, dim, generator)
    fused = torch.randn(len(lengths), 1, 3 * heads * dim, generator=generator)  # q as a strided view, as projected
    q = fused[..., :heads * dim].view(len(lengths), 1, heads, dim).transpose(1, 2)
    for scale in (dim ** -0.5, 1.0):
        out = torch.ops.llmlab.decode_attention(q, keys, values, scale)
        assert out.shape == (len(lengths), heads, 1, dim)
        assert out.transpose(1, 2).is_contiguous()  # what the output projection reads, without a copy
        torch.testing.assert_close(out, reference(q, keys, values, scale), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_kernel_refuses_mismatched_inputs_in_one_sentence():
    keys, values = ragged_rows([4, 5], 2, 16, torch.Generator().manual_seed(0))
    q = torch.randn(2, 4, 1, 16)
    cases = [
        ((q[:1], keys, values), "one key and one value tensor per query row"),
        ((torch.randn(2, 4, 2, 16), keys, values), r"query must be float32 \[rows, heads, 1, head_dim\]"),
        ((torch.randn(2, 3, 1, 16), keys, values), "multiple of its key/value heads"),
        ((q, [k.transpose(2, 3) for k in keys], values), r"keys and values must be float32 \[1, kv_heads"),
        ((q, [k.double() for k in keys], values), r"keys and values must be float32"),
    ]
    for arguments, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.llmlab.decode_attention(*arguments, 0.25)


@needs_kernel
def test_the_backend_equals_the_dense_one_and_leaves_it_what_the_kernel_does_not_take():
    generator = torch.Generator().manual_seed(1)
    keys, values = ragged_rows([6, 9], 2, 32, generator)
    q = torch.randn(2, 4, 1, 32, generator=generator)
    dense = DenseAttention()
    torch.testing.assert_close(BACKEND.attend(q, keys, values, (None, False), None, 0.0),
                               dense.attend(q, keys, values, (None, False), None, 0.0), rtol=1e-5, atol=1e-5)
    k, v = (torch.randn(2, 2, 7, 32, generator=generator) for _ in range(2))  # one tensor for every row
    torch.testing.assert_close(BACKEND.attend(q, k, v, (None, False), 0.3, 0.0),
                               dense.attend(q, k, v, (None, False), 0.3, 0.0), rtol=1e-5, atol=1e-5)
    mask = torch.zeros(2, 1, 1, 7).masked_fill(torch.arange(7) < 2, torch.finfo(torch.float32).min)
    queries = torch.randn(2, 4, 3, 32, generator=generator)
    for arguments in [(q, k, v, (mask, False)), (queries, k, v, (None, True)), (q.bfloat16(), k.bfloat16(),
                                                                               v.bfloat16(), (None, False))]:
        assert torch.equal(BACKEND.attend(*arguments, None, 0.0), dense.attend(*arguments, None, 0.0))
    q.requires_grad_()
    out = BACKEND.attend(q, k, v, (None, False), None, 0.0)
    out.sum().backward()  # autograd runs through the dense backend
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_a_ragged_cache_resolves_to_a_backend_that_takes_its_rows_and_to_sdpa_otherwise():
    cache = RaggedCache(1, [4], 1, 8)
    cpu = torch.device("cpu")
    assert resolve_backend("native", cpu, False, cache) is BACKEND
    assert resolve_backend("flex", cpu, False, cache) is BACKENDS["sdpa"]
    assert resolve_backend("auto", cpu, False, cache) is BACKENDS["sdpa"]
    assert resolve_backend("native", cpu, False, None) is BACKEND


@needs_kernel
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_prepack_selects_the_native_backend_with_the_same_tokens_from_every_cache(name):
    model = tiny_model(name)
    config = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    expected = generate(model, PROMPTS, config).tokens
    prepack(model)
    assert model.attention_backend == "native"
    for cache in ("ragged", "dynamic", "static", "paged"):
        assert generate(model, PROMPTS, config, cache=cache).tokens == expected, cache
    unpack(model)
    assert model.attention_backend == "sdpa"
    prepack(model, kernel="onednn")  # PyTorch's kernels only
    assert model.attention_backend == "sdpa"
    unpack(model)
    model.set_attention_backend("flex")  # a backend chosen by the user stays
    prepack(model)
    assert model.attention_backend == "flex"


@needs_kernel
def test_a_decode_steps_logits_through_the_native_backend_equal_sdpas():
    model = tiny_model("llama")
    prompt = torch.tensor([PROMPTS[1]])
    logits = {}
    for backend in ("sdpa", "native"):
        model.set_attention_backend(backend)
        cache = RaggedCache.for_model(model, [prompt.shape[1] + 1])
        with torch.no_grad(), torch.profiler.profile() as profile:
            for ids in (prompt, torch.tensor([[7]])):  # prefill, then one decode step
                inputs = model.prepare(ids, cache=cache)
                hidden, _ = model.hidden(inputs)
        logits[backend] = model.logits(hidden, -1)
        kernel_calls = sum(event.name == "llmlab::decode_attention" for event in profile.events())
        assert kernel_calls == (model.config.n_layers if backend == "native" else 0)  # the decode step's layers
    torch.testing.assert_close(logits["native"], logits["sdpa"], rtol=1e-5, atol=1e-5)
