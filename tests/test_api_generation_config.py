"""llmlab.load reads a directory's generation_config.json into model.generation_config, generate()'s defaults."""

import json

import pytest
import torch

import llmlab
from llmlab.errors import CheckpointError
from llmlab.infer.generate import generate
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf

PROMPT = [5, 9, 14, 3]
STEPS = 12


@pytest.fixture(scope="module")
def hf_directory(tmp_path_factory):
    """A tiny LLaMA saved in Hugging Face format, without an EOS id of its own."""
    torch.manual_seed(0)
    model = Model(presets.llama("tiny", vocab_size=97, init_std=0.2, eos_token_id=None, bos_token_id=None)).eval()
    directory = tmp_path_factory.mktemp("hf") / "model"
    save_hf(model, directory)
    return directory


def write_generation_config(directory, values):
    (directory / "generation_config.json").write_text(json.dumps(values))


def test_several_eos_ids_from_generation_config_stop_at_either(hf_directory):
    write_generation_config(hf_directory, {})
    free = generate(llmlab.load(hf_directory), PROMPT, max_new_tokens=STEPS).tokens[0]
    first, later = free[2], next(t for t in free[3:] if t not in free[:3])  # the reference: greedy without EOS
    unused = next(t for t in range(97) if t not in free)
    for eos, stop_at in (([first, unused], first), ([unused, later], later)):
        write_generation_config(hf_directory, {"eos_token_id": eos, "do_sample": False})
        model = llmlab.load(hf_directory)
        assert model.generation_config.eos_token_ids == tuple(eos)
        result = generate(model, PROMPT, max_new_tokens=STEPS)
        assert result.tokens[0] == free[: free.index(stop_at) + 1]
        assert result.finish_reasons == ["stop"]


def test_a_directory_without_generation_config_has_none(tmp_path):
    llmlab.save(Model(presets.llama("tiny")), tmp_path / "bare")
    assert getattr(llmlab.load(tmp_path / "bare"), "generation_config", None) is None


@pytest.mark.parametrize("text", ["{not json", json.dumps({"temperature": -1.0}), json.dumps([1, 2])])
def test_a_malformed_generation_config_is_a_checkpoint_error_naming_the_file(hf_directory, text):
    (hf_directory / "generation_config.json").write_text(text)
    with pytest.raises(CheckpointError, match="generation_config.json") as error:
        llmlab.load(hf_directory)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("format", ["llmlab", "hf"])
def test_the_generation_config_survives_save_and_load(tmp_path, format):
    from llmlab.infer.config import GenerationConfig

    torch.manual_seed(0)
    model = Model(presets.llama("tiny", vocab_size=97)).eval()
    model.generation_config = GenerationConfig(eos_token_id=(3, 7), max_new_tokens=40, top_p=0.9, do_sample=True)
    llmlab.save(model, tmp_path / format, format=format)
    assert llmlab.load(tmp_path / format).generation_config == model.generation_config
