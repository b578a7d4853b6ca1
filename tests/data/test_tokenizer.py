import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from llmlab.data.corpus import bundled_corpus
from llmlab.data.tokenizer import END_OF_TEXT, PAD, load_tokenizer, save_tokenizer, train_bpe_tokenizer
from llmlab.errors import DataError

VOCAB_SIZE = 1000
BYTE_ALPHABET_SIZE = 256


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(bundled_corpus(200_000).split("\n\n"), VOCAB_SIZE)


@pytest.fixture(scope="module")
def saved_path(tokenizer, tmp_path_factory):
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def transformers_tokenizer(saved_path):
    return PreTrainedTokenizerFast(tokenizer_file=saved_path)


def test_vocabulary_has_the_requested_size_with_special_tokens_first(tokenizer):
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    assert tokenizer.token_to_id(PAD) == 1


def test_first_merge_is_the_most_frequent_pair():
    # "ab ab ab" pre-tokenises to "ab", "Ġab", "Ġab": the pair (a, b) occurs 3 times, (Ġ, a) twice.
    tokenizer = train_bpe_tokenizer(["ab ab ab"], vocab_size=BYTE_ALPHABET_SIZE + 2 + 1)
    assert tokenizer.encode("ab").tokens == ["ab"]
    assert tokenizer.encode(" ab").tokens == ["Ġ", "ab"]


@given(st.text())
def test_decoding_restores_any_text(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_common_words_are_single_tokens(tokenizer):
    assert len(tokenizer.encode(" the").ids) == 1
    assert len(tokenizer.encode("Return the value").ids) <= 3


def test_end_of_text_is_one_token(tokenizer):
    assert tokenizer.encode(f"a{END_OF_TEXT}b").tokens == ["a", END_OF_TEXT, "b"]


@given(st.text())
def test_transformers_encodes_and_decodes_like_tokenizers(tokenizer, transformers_tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert transformers_tokenizer.encode(text, add_special_tokens=False) == ids
    assert transformers_tokenizer.decode(ids) == text


def test_saved_file_loads_back(tokenizer, saved_path):
    loaded = load_tokenizer(os.path.dirname(saved_path))
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_missing_tokenizer_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no tokenizer file"):
        load_tokenizer(tmp_path)


def test_too_small_vocabulary_is_a_data_error():
    with pytest.raises(DataError, match="vocab_size 100"):
        train_bpe_tokenizer(["text"], vocab_size=100)
