"""Inputs a model cannot take are a ConfigError with one sentence, not an IndexError or RuntimeError deep inside."""

import pytest
import torch

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.sampling import next_token
from llmlab.model import Model, ModelConfig

TINY = dict(vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=16)
IDS = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    return Model(ModelConfig(**TINY)).eval()  # learned positions: a fixed context of 16


@pytest.mark.parametrize(("call", "words"), [
    (lambda m: m(IDS, attention_mask=torch.ones(2, 4)), ["attention_mask", "(2, 4)", "(2, 5)"]),
    (lambda m: m(IDS[0]), ["2-D", "input_ids[None]"]),
    (lambda m: m(IDS.float()), ["integer token ids"]),
    (lambda m: m(IDS.clone().fill_(61)), ["token id 61", "0..60"]),
    (lambda m: m(IDS - 70), ["token id -70"]),
    (lambda m: m(torch.zeros(1, 17, dtype=torch.long)), ["17 positions", "max_seq_len 16"]),
    (lambda m: m.generate(IDS[0]), ["2-D"]),
    (lambda m: m.generate(IDS + 100), ["token id"]),
    (lambda m: m.generate(IDS, attention_mask=torch.ones(2, 6)), ["attention_mask"]),
    (lambda m: m.generate(IDS, max_new_tokens=12), ["max_new_tokens=12", "max_seq_len 16"]),
    (lambda m: m.generate(IDS, do_sample=True, top_p=0), ["top_p", "(0, 1]"]),
    (lambda m: m.generate(IDS, do_sample=True, top_p=1.5), ["top_p"]),
    (lambda m: m.generate(IDS, do_sample=True, temperature=-1.0), ["temperature"]),
    (lambda m: m.generate(IDS, do_sample=True, top_k=-1), ["top_k"]),
])
def test_bad_inputs_are_one_sentence(model, call, words):
    with pytest.raises(ConfigError) as error:
        call(model)
    message = str(error.value)
    assert isinstance(error.value, (LlmlabError, ValueError)) and message.endswith(".") and "\n" not in message
    assert all(word in message for word in words), message


def test_good_inputs_still_work(model):
    assert model.generate(IDS, max_new_tokens=11).shape == (2, 16)  # 5 + 11 = max_seq_len
    mask = torch.ones(2, 5, dtype=torch.long)
    assert model.generate(IDS, 3, attention_mask=mask, do_sample=True, top_p=1.0, top_k=0).shape == (2, 8)
    rope = Model(ModelConfig(**{**TINY, "position": "rope"})).eval()  # no fixed context
    assert rope.generate(IDS, max_new_tokens=20).shape == (2, 25)
    assert next_token(torch.zeros(1, 61), do_sample=False, top_p=0).shape == (1,)  # greedy ignores sampling options
