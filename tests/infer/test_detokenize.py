"""Incremental detokenization: for every tokenizer kind llmlab trains, the pieces pushed one token at a time or in
random chunks join to tokenizer.decode of all the ids, across characters split over byte tokens."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmlab.data.tokenizer import train_tokenizer
from llmlab.infer.detokenize import IncrementalDecoder

KINDS = ("byte_bpe", "bpe", "unigram")
CORPUS = [
    "The cat sat on the mat. The dog sat on the log.", "Größe und Maß, café crème, naïve façade.",
    "東京は日本の首都です。京都も古い都です。", "Москва — столица России.", "e\u0301 a\u0308 n\u0303 combining marks",
    "😀 smile, 👩‍👩‍👧 family, 🇫🇷 flag", "def f(x):\n    return x * 2\n",
] * 4
TEXTS = st.lists(st.one_of(
    st.sampled_from(list("abc xyz.\n") + ["the ", "sat ", "東京", "都", "é", "ß", "😀", "👩‍👧", "🇫🇷", "\u0301", "д"]),
    st.characters(codec="utf-8"),
), max_size=20).map("".join)


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return train_tokenizer(CORPUS, 300, request.param)


def decode_in_chunks(tokenizer, ids, cuts, **options):
    decoder = IncrementalDecoder(tokenizer, **options)
    bounds = [0, *sorted(cuts), len(ids)]
    pieces = [decoder.push(ids[start:end]) for start, end in zip(bounds, bounds[1:])]
    return pieces + [decoder.flush()]


@given(text=TEXTS)
def test_one_token_at_a_time_joins_to_the_whole_decode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    pieces = decode_in_chunks(tokenizer, ids, range(1, len(ids)))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces[:-1]) or "\ufffd" in text  # no half characters shown


@given(text=TEXTS, data=st.data(), skip=st.booleans())
def test_random_chunks_join_to_the_whole_decode(tokenizer, text, data, skip):
    ids = tokenizer.encode(text).ids + [0] + tokenizer.encode(text[::-1]).ids  # a special token in the middle
    cuts = data.draw(st.lists(st.integers(0, len(ids)), max_size=8))
    assert "".join(decode_in_chunks(tokenizer, ids, cuts, skip_special_tokens=skip)) == tokenizer.decode(
        ids, skip_special_tokens=skip)


@given(ids=st.lists(st.integers(0, 299), max_size=30))
def test_any_token_ids_join_to_the_whole_decode(tokenizer, ids):
    assert "".join(decode_in_chunks(tokenizer, ids, range(1, len(ids)))) == tokenizer.decode(ids)


def test_a_character_split_over_byte_tokens_appears_once_complete(tokenizer):
    ids = tokenizer.encode("a🦜").ids  # a character the tiny vocabulary lacks: four byte tokens
    pieces = decode_in_chunks(tokenizer, ids, range(1, len(ids)))
    assert "".join(pieces) == "a🦜" and "🦜" in pieces and len(ids) >= 4


def test_context_tokens_are_not_emitted(tokenizer):
    prompt, completion = tokenizer.encode("The cat").ids, tokenizer.encode(" sat on the mat").ids
    decoder = IncrementalDecoder(tokenizer, context=prompt)
    text = "".join(decoder.push([token]) for token in completion) + decoder.flush()
    assert text == tokenizer.decode(prompt + completion)[len(tokenizer.decode(prompt)):]
