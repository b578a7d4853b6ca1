"""The compiled decode step (llmlab.infer.compiled): dynamo compiles the one-token step once for a whole generation
(counted by torch._dynamo.testing.CompileCounter as the backend), and its tokens equal the eager dynamic cache's and
transformers' generate."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from llmlab.errors import ConfigError
from llmlab.infer.generate import generate, generate_ids
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

PROMPTS = [[5, 9, 14], [3, 8, 20, 21, 7, 2, 30], [11, 4, 6, 19, 1]]  # left-padded: rows of three lengths
VOCAB = 97


def tiny_model(name: str) -> Model:
    """A tiny random model whose logits are peaked enough that greedy choices are not near-ties."""
    torch.manual_seed(0)
    return Model(presets.get(name, "tiny", vocab_size=VOCAB, init_std=0.2, dropout=0.0)).eval()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compilations."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["llama", "gpt2", "prefix_llama", "bloom"])  # rope, learned, prefix LM, ALiBi
def test_decode_step_compiles_once_and_matches_eager(name):
    model = tiny_model(name)
    counter = CompileCounter()
    eager = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True).tokens
    compiled = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True, cache="static", compile=counter).tokens
    assert compiled == eager
    assert counter.frame_count == 1  # one graph for 19 decode steps: no recompilation from step to step
    again = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True, cache="static", compile=counter).tokens
    assert again == eager and counter.frame_count == 1  # same batch and capacity: the graph is reused
    one = generate(model, PROMPTS[1], max_new_tokens=20, ignore_eos=True, cache="static", compile=counter).tokens
    assert one == generate(model, PROMPTS[1], max_new_tokens=20, ignore_eos=True).tokens
    assert counter.frame_count == 2  # a batch of one: one graph more, again for every step
    shorter = generate(model, PROMPTS, max_new_tokens=5, ignore_eos=True, cache="static", compile=counter).tokens
    assert [row[:5] for row in eager] == shorter and counter.frame_count == 2  # capacity rounded up: the same graph


def test_compiled_tokens_equal_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model("llama")
    save_hf(model, tmp_path / "m")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    ids = torch.tensor([[0] * 4 + PROMPTS[0], PROMPTS[1], [0] * 2 + PROMPTS[2]])
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([[4], [0], [2]])).long()
    config = transformers.GenerationConfig(max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = reference.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    counter = CompileCounter()
    ours = generate_ids(model, ids, mask, max_new_tokens=20, ignore_eos=True, cache="static", compile=counter)
    assert torch.equal(ours, expected) and counter.frame_count == 1


def test_n_samples_reorder_the_static_cache_in_place():
    model = tiny_model("llama")
    counter = CompileCounter()
    options = dict(max_new_tokens=12, do_sample=True, n=3, seed=7, ignore_eos=True)
    eager = generate(model, PROMPTS[:2], **options).tokens
    compiled = generate(model, PROMPTS[:2], cache="static", compile=counter, **options).tokens
    assert compiled == eager and counter.frame_count == 1


def test_compile_needs_a_static_cache_and_a_decoder():
    with pytest.raises(ConfigError, match="static"):
        generate(tiny_model("llama"), PROMPTS, max_new_tokens=2, cache="ragged", compile=True)
    with pytest.raises(ConfigError, match="decoder-only"):
        generate(tiny_model("t5"), PROMPTS, max_new_tokens=2, cache="static", compile=True)


def test_inductor_decode_step_matches_eager():
    model = tiny_model("gpt2")  # CPU inductor on the tiny model compiles in seconds
    eager = generate(model, PROMPTS, max_new_tokens=8, ignore_eos=True).tokens
    assert generate(model, PROMPTS, max_new_tokens=8, ignore_eos=True, cache="static", compile=True).tokens == eager


@pytest.mark.gpu
def test_cuda_graph_decode_step_compiles_once_and_matches_eager():
    from torch._dynamo.utils import counters

    model = tiny_model("llama").cuda()
    eager = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True).tokens
    counters.clear()
    compiled = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True, cache="static", compile=True).tokens
    again = generate(model, PROMPTS, max_new_tokens=20, ignore_eos=True, cache="static", compile=True).tokens
    assert compiled == eager and again == eager
    assert counters["stats"]["unique_graphs"] == 1  # mode="reduce-overhead": one graph, replayed as a CUDA graph
    assert not counters["inductor"].get("cudagraph_skips")  # static addresses: no step falls back to plain kernels
