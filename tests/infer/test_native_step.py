"""The native decode step (one call per step) against the model's eager step: the same logits and greedy tokens for
every family it lowers, taken for each step after the prefill, refused where the model has a part it lacks, and
following weights that change after it was built."""

import pytest
import torch

from llmlab.infer import native, native_step
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import DecodeState, generate
from llmlab.infer.prepack import prepack, unpack
from tests.infer.test_generate import PROMPTS, tiny_model
from tests.infer.test_native import ROOT

available = all(native.load(kernel) for kernel in native_step.KERNELS)
pytestmark = pytest.mark.skipif(not available, reason=f"no native kernels here: "
                                                      f"{native.unavailable_reason('decode_step')}")

# pre-norm decoders: learned or rotary positions (half and interleaved, partial), LayerNorm with and without bias or
# RMSNorm, multi-head, grouped and multi-query attention, global and sliding-window layers, plain and gated MLPs,
# sequential and parallel residuals
NATIVE_FAMILIES = ["gpt2", "opt", "gptj", "pythia", "gpt_neox", "falcon", "llama", "prefix_llama", "palm", "gpt_neo",
                   "gpt3"]
CONFIG = GenerationConfig(max_new_tokens=8, ignore_eos=True)


def step_logits(model, use_native: bool) -> torch.Tensor:
    """Logits of the first two decode steps after a batched ragged prefill of PROMPTS (native or eager steps)."""
    longest = max(map(len, PROMPTS))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in PROMPTS])
    state = DecodeState(model, ids, mask, 4, cache="ragged")
    assert state.native_step is not None
    if not use_native:
        state.native_step = None
    with torch.no_grad():
        state.logits()
        steps = []
        for token in (7, 11):
            state.append(torch.full((len(PROMPTS),), token))
            steps.append(state.logits())
    return torch.stack(steps)


@pytest.mark.parametrize("name", NATIVE_FAMILIES)
def test_the_native_step_gives_the_eager_steps_logits_and_tokens(name):
    model = tiny_model(name)
    expected = generate(model, PROMPTS, CONFIG, cache="ragged").tokens
    prepack(model)
    assert native_step.lower(model) is not None
    # float32 sums in other orders (its norms sum in double); GPT-Neo's unscaled attention sharpens them most
    torch.testing.assert_close(step_logits(model, True), step_logits(model, False), rtol=1e-4, atol=1e-4)
    with torch.profiler.profile() as profile:
        tokens = generate(model, PROMPTS, CONFIG, cache="ragged").tokens
    assert tokens == expected
    calls = sum(event.name == "llmlab::decode_step" for event in profile.events())
    assert calls == CONFIG.max_new_tokens - 1  # every step after the prefill
    assert generate(model, PROMPTS, CONFIG, cache="dynamic").tokens == expected  # other caches keep eager steps


@pytest.mark.parametrize("name", ["bloom", "mpt", "t5"])  # ALiBi, ALiBi, an encoder-decoder
def test_models_with_parts_the_native_step_lacks_keep_the_eager_step(name):
    model = tiny_model(name)
    expected = generate(model, PROMPTS, CONFIG).tokens
    prepack(model)
    assert native_step.lower(model) is None
    assert generate(model, PROMPTS, CONFIG).tokens == expected


def test_only_a_float32_model_prepacked_for_the_native_kernel_in_eval_mode_takes_it():
    model = tiny_model("llama")
    assert native_step.lower(model) is None  # not prepacked
    prepack(model, kernel="onednn")
    assert native_step.lower(model) is None
    unpack(model)
    prepack(model)
    assert native_step.lower(model) is not None
    model.train()
    assert native_step.lower(model) is None
    model.eval()
    unpack(model)
    assert native_step.lower(model) is None
    model.bfloat16()
    prepack(model)  # oneDNN for bfloat16
    assert native_step.lower(model) is None


def test_weights_changed_after_the_step_was_built_are_used():
    model = tiny_model("gpt2")
    prepack(model)
    generate(model, PROMPTS, CONFIG)  # builds the native step and packs the weights
    other = tiny_model("gpt2")
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(-1.5)
    expected = generate(other, PROMPTS, CONFIG).tokens
    model.load_state_dict(other.state_dict())
    assert generate(model, PROMPTS, CONFIG).tokens == expected


def test_the_op_refuses_settings_that_do_not_match_in_one_sentence():
    model = tiny_model("gpt2")
    prepack(model)
    step = native_step.lower(model)
    step.settings = step.settings[:-1]
    with pytest.raises(RuntimeError, match="decode_step's settings do not match"):
        generate(model, PROMPTS, CONFIG)


def test_with_the_native_kernels_off_a_prepacked_model_generates_through_onednn_and_sdpa(tmp_path):
    from tests.infer.test_native import _in_a_new_process
    code = ("import torch; from llmlab.infer import generate, native_step, prepack; "
            "from tests.infer.test_generate import PROMPTS, tiny_model; model = tiny_model('llama'); "
            "expected = generate(model, PROMPTS, max_new_tokens=5).tokens; prepack(model); "
            "print(model.attention_backend, native_step.lower(model), "
            "generate(model, PROMPTS, max_new_tokens=5).tokens == expected)")
    done = _in_a_new_process(code, tmp_path, LLMLAB_NATIVE="0", PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    assert done.stdout.split() == ["sdpa", "None", "True"], done.stderr


@pytest.mark.parametrize("name", ["gpt_neo", "gpt3"])
def test_sliding_window_layers_see_only_their_window_past_its_length(name):
    model = tiny_model(name)
    window = model.config.attn_window
    config = GenerationConfig(max_new_tokens=window + 8, ignore_eos=True)  # every prompt grows past the window
    expected = generate(model, PROMPTS, config, cache="ragged").tokens
    prepack(model)
    assert native_step.lower(model) is not None
    assert generate(model, PROMPTS, config, cache="ragged").tokens == expected
