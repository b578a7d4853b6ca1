"""Prepacked linear weights against plain F.linear: the same logits and tokens, autograd untouched, weights that change
after packing seen, and nothing a checkpoint or a copy holds changed."""

import copy

import pytest
import torch
from torch import nn

from llmlab.errors import ConfigError
from llmlab.infer import native
from llmlab.infer.config import GenerationConfig
from llmlab.infer.engine import Engine
from llmlab.infer.generate import generate
from llmlab.infer.prepack import PackedLinear, is_prepacked, prepack, unpack
from llmlab.model import Model, presets
from tests.infer.test_generate import PROMPTS, tiny_model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")

FAMILIES = ["gpt2", "llama", "t5", "bloom", "prefix_llama"]


def linear_count(model) -> int:
    return sum(type(module) is nn.Linear for module in model.modules())


@pytest.mark.parametrize("name", FAMILIES)
def test_prepacked_logits_equal_plain_ones_and_greedy_tokens_are_the_same(name):
    model = tiny_model(name)
    ids = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=ids if model.config.arch == "encoder_decoder" else None)
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    tokens = generate(model, PROMPTS, config).tokens
    linears = linear_count(model)
    assert prepack(model) == linears > 0 and is_prepacked(model)
    with torch.no_grad():
        packed = model(input_ids=ids, decoder_input_ids=ids if model.config.arch == "encoder_decoder" else None)
    # float32 sums in another order (T5's unscaled attention makes its hidden states large before the head's scale)
    torch.testing.assert_close(packed.logits, expected.logits, rtol=1e-4, atol=1e-4)
    assert generate(model, PROMPTS, config).tokens == tokens
    unpack(model)
    assert not is_prepacked(model) and linear_count(model) == linears
    assert all(parameter.is_contiguous() for parameter in model.parameters())


def test_the_engine_on_a_prepacked_model_gives_plain_generates_tokens():
    model = tiny_model("llama")
    config = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    expected = [generate(model, [prompt], config).tokens[0] for prompt in PROMPTS]
    prepack(model)
    engine = Engine(model, max_num_seqs=2, block_size=4, max_num_batched_tokens=8, kv_cache_tokens=128,
                    max_model_len=64)
    assert [output.outputs[0].token_ids for output in engine.generate(PROMPTS, config)] == expected


def test_a_packed_layer_equals_f_linear_by_hand_with_and_without_bias():
    torch.manual_seed(0)
    for bias in (True, False):
        layer = nn.Linear(24, 40, bias=bias)
        x = torch.randn(3, 5, 24)
        by_hand = x @ layer.weight.detach().T + (layer.bias.detach() if bias else 0)
        prepack(layer)
        assert type(layer) is PackedLinear
        with torch.no_grad():
            torch.testing.assert_close(layer(x), by_hand, rtol=1e-5, atol=1e-5)


def test_training_through_a_packed_model_keeps_autograd_and_sees_each_new_weight():
    torch.manual_seed(0)
    config = presets.llama("tiny", vocab_size=97, n_layers=1, dropout=0.0)
    plain, packed = Model(config), Model(config)
    packed.load_state_dict(plain.state_dict())
    prepack(packed)
    ids = torch.randint(0, 97, (2, 9))
    optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-2) for model in (plain, packed)]
    for _ in range(3):
        losses = []
        for model, optimizer in zip((plain, packed), optimizers):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss)
        torch.testing.assert_close(losses[1], losses[0])
        with torch.no_grad():  # the packed copies follow the optimizer's in-place updates
            torch.testing.assert_close(packed(input_ids=ids).logits, plain(input_ids=ids).logits,
                                       rtol=1e-5, atol=1e-5)


def test_loading_new_weights_into_a_packed_model_is_seen():
    model, other = tiny_model("gpt2"), tiny_model("gpt2")
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(0.5)
    ids = torch.tensor([PROMPTS[0]])
    prepack(model)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, other(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_the_state_dict_and_copies_of_a_packed_model_are_unchanged():
    model = tiny_model("gpt2")
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prepack(model)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    twin = copy.deepcopy(model)  # the packed copies are not the module's attributes, so copying works
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=ids).logits, model(input_ids=ids).logits)


def test_only_float_cpu_layers_are_packed():
    layers = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).double(), nn.Linear(4, 4).to(torch.bfloat16))
    assert prepack(layers) == 2
    assert [type(layer) for layer in layers] == [PackedLinear, nn.Linear, PackedLinear]
    with torch.no_grad():
        x = torch.randn(2, 4, dtype=torch.bfloat16)
        torch.testing.assert_close(layers[2](x), nn.functional.linear(x, layers[2].weight, layers[2].bias))


def test_either_kernel_can_be_chosen_and_gives_f_linears_result_and_a_copy_keeps_it():
    torch.manual_seed(0)
    x = torch.randn(3, 24)
    for kernel in ("onednn", "native", "auto"):
        if kernel == "native" and not native.load("blocked_linear"):
            continue
        layer = nn.Linear(24, 40)
        expected = nn.functional.linear(x, layer.weight, layer.bias)
        assert prepack(layer, kernel=kernel) == 1
        is_onednn = kernel == "onednn" or not native.load("blocked_linear")
        assert layer.packed_weight().is_mkldnn == is_onednn
        assert copy.deepcopy(layer).packed_weight().is_mkldnn == is_onednn
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="prepack's kernel must be one of auto, native, onednn, not 'fast'"):
        prepack(nn.Linear(2, 2), kernel="fast")


def test_a_prepacked_model_traces_whole_into_the_compiled_decode_step():
    model = tiny_model("llama")
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    expected = generate(model, PROMPTS, config).tokens
    prepack(model)
    assert generate(model, PROMPTS, config, cache="static", compile="eager").tokens == expected  # fullgraph=True
