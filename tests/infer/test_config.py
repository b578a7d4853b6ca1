"""GenerationConfig: each value out of range is a ConfigError naming the field; Hugging Face generation_config.json
files load; lists become tuples; replace validates again."""

import json

import pytest

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig


@pytest.mark.parametrize(("options", "words"), [
    (dict(max_new_tokens=0), ["max_new_tokens", "at least 1"]),
    (dict(max_new_tokens=2.5), ["max_new_tokens"]),
    (dict(min_new_tokens=-1), ["min_new_tokens", "at least 0"]),
    (dict(min_new_tokens=30), ["min_new_tokens (30)", "max_new_tokens (20)"]),
    (dict(do_sample="yes"), ["do_sample", "True or False"]),
    (dict(temperature=-0.1), ["temperature", "[0, inf)"]),
    (dict(temperature=0.0, do_sample=True), ["temperature", "above 0", "do_sample=False"]),
    (dict(top_k=-1), ["top_k", "at least 0"]),
    (dict(top_p=0.0), ["top_p", "(0, 1]"]),
    (dict(top_p=1.2), ["top_p", "(0, 1]"]),
    (dict(min_p=-0.1), ["min_p", "[0, 1]"]),
    (dict(min_p=1.5), ["min_p"]),
    (dict(repetition_penalty=0.0), ["repetition_penalty", "(0, inf)"]),
    (dict(presence_penalty=2.5), ["presence_penalty", "[-2, 2]"]),
    (dict(frequency_penalty=-3), ["frequency_penalty", "[-2, 2]"]),
    (dict(no_repeat_ngram_size=-2), ["no_repeat_ngram_size"]),
    (dict(eos_token_id=-1), ["eos_token_id"]),
    (dict(eos_token_id=[1, "2"]), ["eos_token_id"]),
    (dict(stop=["ok", ""]), ["stop", "non-empty"]),
    (dict(seed=1.5), ["seed"]),
    (dict(n=0), ["n must", "at least 1"]),
    (dict(n=2), ["n (2)", "do_sample=True"]),
    (dict(num_beams=0), ["num_beams", "at least 1"]),
    (dict(num_beams=2, n=3), ["n (3)", "num_beams (2)"]),
    (dict(num_beams=2, do_sample=True), ["num_beams", "do_sample", "not supported"]),
    (dict(length_penalty="long"), ["length_penalty"]),
    (dict(early_stopping="sometimes"), ["early_stopping", "'never'"]),
    (dict(early_stopping=1), ["early_stopping"]),
    (dict(logprobs=-1), ["logprobs", "at least 0"]),
    (dict(ignore_eos=1), ["ignore_eos"]),
])
def test_each_bad_value_is_a_config_error_naming_the_field(options, words):
    with pytest.raises(ConfigError) as error:
        GenerationConfig(**options)
    message = str(error.value)
    assert all(word in message for word in words), message
    assert message.count(". ") == 0 and message.endswith(".")


def test_valid_edges_are_accepted():
    config = GenerationConfig(temperature=0.0, top_p=1.0, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                              n=3, num_beams=3, early_stopping="never", logprobs=0, max_new_tokens=1)
    assert config.n == 3 and config.do_sample is False
    assert GenerationConfig(do_sample=True, n=4).n == 4


def test_lists_are_stored_as_tuples():
    config = GenerationConfig(eos_token_id=[2, 5], stop=["\n\n", "###"])
    assert config.eos_token_id == (2, 5) and config.stop == ("\n\n", "###")
    assert GenerationConfig(stop="END").stop == ("END",)
    assert GenerationConfig(eos_token_id=7).eos_token_ids == (7,) and GenerationConfig().eos_token_ids == ()
    hash(config)  # frozen and hashable


LLAMA3 = {  # meta-llama/Meta-Llama-3.1-8B-Instruct's generation_config.json
    "bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009], "temperature": 0.6,
    "top_p": 0.9, "transformers_version": "4.42.3",
}


def test_from_hf_reads_a_generation_config_dict():
    config = GenerationConfig.from_hf(LLAMA3)
    assert config == GenerationConfig(do_sample=True, eos_token_id=(128001, 128008, 128009), temperature=0.6, top_p=0.9)


def test_from_hf_reads_every_supported_key_from_a_file_or_directory(tmp_path):
    values = dict(max_new_tokens=64, min_new_tokens=2, do_sample=False, temperature=0.7, top_k=50, top_p=0.95,
                  min_p=0.05, repetition_penalty=1.2, no_repeat_ngram_size=3, num_beams=4, length_penalty=0.8,
                  early_stopping="never", eos_token_id=1, max_length=None, pad_token_id=0, num_beam_groups=1)
    (tmp_path / "generation_config.json").write_text(json.dumps(values))
    config = GenerationConfig.from_hf(tmp_path)
    assert config == GenerationConfig.from_hf(tmp_path / "generation_config.json")
    assert (config.max_new_tokens, config.top_k, config.num_beams, config.early_stopping, config.eos_token_id) == (
        64, 50, 4, "never", 1)
    assert (config.min_p, config.repetition_penalty, config.no_repeat_ngram_size, config.length_penalty) == (
        0.05, 1.2, 3, 0.8)


def test_from_hf_names_a_bad_file(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="generation_config.json"):
        GenerationConfig.from_hf(tmp_path)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig.from_hf({"top_p": 2.0})


def test_replace_validates_again_and_names_unknown_fields():
    config = GenerationConfig().replace(do_sample=True, temperature=0.5)
    assert config.temperature == 0.5
    with pytest.raises(ConfigError, match="temperature"):
        config.replace(temperature=0.0)
    with pytest.raises(ConfigError, match="'top_q'"):
        config.replace(top_q=0.5)
