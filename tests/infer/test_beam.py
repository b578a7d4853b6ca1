"""Beam search against transformers' generate(num_beams=...) on the same weights: the returned hypotheses token for
token and their scores, with an EOS id that greedy decoding meets early so that finished hypotheses matter."""

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.generate import generate

from .test_generate import PROMPTS, as_transformers, text_model, tiny_model  # noqa: F401 (a fixture)

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 16
SETTINGS = [
    dict(num_beams=2, length_penalty=1.0, early_stopping=False, n=1),
    dict(num_beams=4, length_penalty=0.6, early_stopping=True, n=3),
    dict(num_beams=4, length_penalty=2.0, early_stopping="never", n=3),
    dict(num_beams=4, length_penalty=1.0, early_stopping="never", n=1),
    dict(num_beams=2, length_penalty=2.0, early_stopping=True, n=2),
    dict(num_beams=4, length_penalty=0.6, early_stopping=False, n=3),
]


@pytest.fixture(scope="module", params=["gpt2", "llama", "t5"])
def family(request, tmp_path_factory):
    """(our model, transformers' on the same weights, an EOS id that greedy decoding of PROMPTS[1] picks second)."""
    model = tiny_model(request.param)
    reference = as_transformers(model, tmp_path_factory.mktemp(request.param))
    eos = generate(model, PROMPTS[1:2], max_new_tokens=2, ignore_eos=True).tokens[0][1]
    return model, reference, eos


def hf_beams(reference, prompts, eos, new_tokens=NEW_TOKENS, pad=0, n=1, **options):
    """transformers' beam search on the left-padded prompts: (each returned hypothesis through EOS, its score)."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    config = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_return_sequences=n,
                                           pad_token_id=pad, eos_token_id=eos, bos_token_id=None, output_scores=True,
                                           return_dict_in_generate=True, **options,
                                           decoder_start_token_id=getattr(reference.config, "decoder_start_token_id",
                                                                          None))
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    rows = out.sequences[:, 1 if reference.config.is_encoder_decoder else longest:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows], out.sequences_scores.tolist()


def assert_same_beams(ours, expected):
    tokens, scores = expected
    assert ours.tokens == tokens
    assert ours.sequences_scores == pytest.approx(scores, abs=1e-5)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_beams_equal_transformers(family, settings):
    model, reference, eos = family
    pad = model.config.pad_token_id or 0
    ours = generate(model, PROMPTS, max_new_tokens=NEW_TOKENS, eos_token_id=eos, **settings)
    assert_same_beams(ours, hf_beams(reference, PROMPTS, eos, pad=pad, **settings))
    assert len(ours.tokens) == len(PROMPTS) * settings["n"]
    for prompt in PROMPTS:  # alone, a prompt's search may end before max_new_tokens (the early-stopping rules)
        alone = generate(model, [prompt], max_new_tokens=NEW_TOKENS, eos_token_id=eos, **settings)
        assert_same_beams(alone, hf_beams(reference, [prompt], eos, pad=pad, **settings))
        assert alone.finish_reasons == ["stop" if row[-1] == eos else "length" for row in alone.tokens]


def test_finished_hypotheses_and_early_stopping_matter(family):
    """The settings above exercise what they claim: hypotheses end at the EOS id, and some searches stop early."""
    model, reference, eos = family
    pad = model.config.pad_token_id or 0
    ended = stopped_early = False
    for settings in SETTINGS:
        for prompt in PROMPTS:
            tokens, _ = hf_beams(reference, [prompt], eos, pad=pad, **settings)
            ended |= any(row[-1] == eos for row in tokens)
            stopped_early |= max(map(len, tokens)) < NEW_TOKENS
    assert ended and stopped_early


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=2),
                                     dict(min_new_tokens=6)], ids=["repetition", "no-repeat-2gram", "min-new"])
def test_processors_act_on_log_probabilities_as_in_transformers(family, options):
    model, reference, eos = family
    settings = dict(num_beams=3, length_penalty=1.0, early_stopping=False, n=2)
    ours = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=eos, **settings, **options)
    assert_same_beams(ours, hf_beams(reference, PROMPTS, eos, 10, model.config.pad_token_id or 0, **settings,
                                     **options))


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_every_cache_gives_the_same_beams(name):
    model = tiny_model(name)
    eos = generate(model, PROMPTS[1:2], max_new_tokens=2, ignore_eos=True).tokens[0][1]
    options = dict(max_new_tokens=12, eos_token_id=eos, num_beams=4, n=3, length_penalty=0.6)
    dynamic = generate(model, PROMPTS, cache="dynamic", **options)
    for cache in ("static", "ragged"):
        other = generate(model, PROMPTS, cache=cache, **options)
        assert other.tokens == dynamic.tokens and other.finish_reasons == dynamic.finish_reasons, cache
        assert other.sequences_scores == pytest.approx(dynamic.sequences_scores, abs=1e-5), cache


def test_model_generate_with_beams_returns_what_transformers_returns(tmp_path):
    model = tiny_model("llama")  # no pad id: both fill finished hypotheses with the EOS id
    reference = as_transformers(model, tmp_path)
    eos = generate(model, PROMPTS[1:2], max_new_tokens=2, ignore_eos=True).tokens[0][1]
    longest = max(map(len, PROMPTS))
    ids = torch.tensor([[eos] * (longest - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in PROMPTS])
    for n in (1, 3):
        ours = model.generate(ids, max_new_tokens=10, attention_mask=mask, num_beams=4, n=n, eos_token_id=eos)
        with torch.no_grad():
            expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, num_beams=4,
                                          num_return_sequences=n, eos_token_id=eos, pad_token_id=eos,
                                          do_sample=False)
        assert torch.equal(ours, expected)


def test_text_prompts_give_the_decoded_hypotheses(text_model):
    result = generate(text_model, ["The cat", "Once upon a time"], max_new_tokens=8, num_beams=3, n=2)
    assert len(result.text) == 4 and result.finish_reasons == ["length"] * 4
    assert result.text == [text_model.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in result.tokens]


@pytest.mark.parametrize(("options", "words"), [
    (dict(num_beams=2, do_sample=True), ["num_beams", "do_sample"]),
    (dict(num_beams=2, n=3), ["n (3)", "num_beams (2)"]),
    (dict(num_beams=2, stop=["x"]), ["Stop strings", "beam search"]),
])
def test_bad_beam_requests_are_one_sentence(options, words):
    model = tiny_model("gpt2")
    with pytest.raises(ConfigError) as error:
        generate(model, PROMPTS, max_new_tokens=4, **options)
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message and all(word in message for word in words), message
