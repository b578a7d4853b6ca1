"""The tokenizer travels with the model: llmlab.load attaches it, and a Hugging Face export tells AutoTokenizer
and generate() its special tokens."""

import copy
import json

import pytest
import torch

import llmlab
from llmlab.data.tokenizer import END_OF_TEXT, PAD, save_tokenizer, train_tokenizer
from llmlab.model import Model, presets

transformers = pytest.importorskip("transformers")

TEXT = "The default value is returned when the key is missing."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An llmlab checkpoint of a tiny LLaMA with its byte-level BPE tokenizer.json."""
    directory = tmp_path_factory.mktemp("checkpoint")
    tokenizer = train_tokenizer([TEXT, "Return the value of the key.", "Raises ValueError if empty."] * 20, 300)
    tokenizer_file = save_tokenizer(tokenizer, directory / "tokenizer")
    end_of_text, pad = tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(PAD)
    config = presets.llama("tiny", vocab_size=tokenizer.get_vocab_size(), bos_token_id=end_of_text,
                           eos_token_id=end_of_text, pad_token_id=pad)
    torch.manual_seed(0)
    llmlab.save(Model(config), directory / "model", tokenizer_file=tokenizer_file)
    return directory / "model"


def test_load_attaches_the_tokenizer(checkpoint):
    model = llmlab.load(checkpoint)
    assert model.tokenizer.encode(TEXT).ids == llmlab.load_tokenizer(checkpoint).encode(TEXT).ids
    assert model.tokenizer.decode(model.tokenizer.encode(TEXT).ids) == TEXT


def test_the_tokenizer_is_no_part_of_the_state_and_survives_copies_and_compile(checkpoint):
    model = llmlab.load(checkpoint)
    assert set(model.state_dict()) == set(Model(model.config).state_dict())
    assert copy.deepcopy(model).tokenizer.encode(TEXT).ids == model.tokenizer.encode(TEXT).ids
    ids = torch.tensor([model.tokenizer.encode(TEXT).ids])
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.equal(compiled(ids).logits, model(ids).logits)


def test_a_directory_without_tokenizer_gives_none(tmp_path):
    llmlab.save(Model(presets.llama("tiny")), tmp_path / "bare")
    assert llmlab.load(tmp_path / "bare").tokenizer is None
    assert Model(presets.llama("tiny")).tokenizer is None


def check_auto_tokenizer(hf_directory, tokenizer, config):
    """transformers' AutoTokenizer knows the config's bos/eos/pad tokens and encodes as our tokenizer does."""
    auto = transformers.AutoTokenizer.from_pretrained(hf_directory)
    expected = {name: (tokenizer.id_to_token(getattr(config, f"{name}_token_id")), getattr(config, f"{name}_token_id"))
                for name in ("bos", "eos", "pad")}
    assert {name: (getattr(auto, f"{name}_token"), getattr(auto, f"{name}_token_id")) for name in expected} == expected
    assert auto(TEXT)["input_ids"] == tokenizer.encode(TEXT).ids
    assert auto.model_max_length == config.max_seq_len
    generation = transformers.GenerationConfig.from_pretrained(hf_directory)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (
        config.bos_token_id, config.eos_token_id, config.pad_token_id)


def test_hf_export_tells_auto_tokenizer_the_special_tokens(checkpoint, tmp_path):
    model = llmlab.load(checkpoint)
    llmlab.save(model, tmp_path / "hf", format="hf", tokenizer_file=checkpoint / "tokenizer.json")
    check_auto_tokenizer(tmp_path / "hf", model.tokenizer, model.config)
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast")


def test_convert_to_hf_and_back_keeps_the_tokenizer(checkpoint, tmp_path):
    llmlab.convert(checkpoint, tmp_path / "hf", to="hf")
    llmlab.convert(tmp_path / "hf", tmp_path / "back", to="llmlab")
    llmlab.convert(tmp_path / "back", tmp_path / "hf-again", to="hf")
    original = llmlab.load(checkpoint)
    for directory in ("hf", "hf-again"):
        check_auto_tokenizer(tmp_path / directory, original.tokenizer, original.config)
    back = llmlab.load(tmp_path / "back")
    assert back.tokenizer.encode(TEXT).ids == llmlab.load(tmp_path / "hf").tokenizer.encode(TEXT).ids


def test_saving_a_loaded_model_keeps_its_tokenizer(checkpoint, tmp_path):
    model = llmlab.load(checkpoint)
    llmlab.save(model, tmp_path / "again")
    llmlab.save(model, tmp_path / "hf", format="hf")
    assert llmlab.load(tmp_path / "again").tokenizer.encode(TEXT).ids == model.tokenizer.encode(TEXT).ids
    check_auto_tokenizer(tmp_path / "hf", model.tokenizer, model.config)
