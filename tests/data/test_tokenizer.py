"""Tokenizers: every kind decodes any Unicode text back exactly, transformers' PreTrainedTokenizerFast loads the
saved tokenizer.json and encodes and decodes alike, special tokens come first and stay whole, SentencePiece-style
kinds fall back to UTF-8 bytes and split digits, and training is deterministic."""

import json
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from llmlab.cli.main import main
from llmlab.data.corpus import bundled_corpus
from llmlab.data.tokenizer import (
    END_OF_TEXT,
    GENERATION_MASK,
    MASK,
    PAD,
    UNKNOWN,
    covered_characters,
    decode_bytes,
    load_tokenizer,
    objective_special_tokens,
    save_tokenizer,
    train_bpe_tokenizer,
    train_tokenizer,
)
from llmlab.errors import ConfigError, DataError

KINDS = ("byte_bpe", "bpe", "unigram")
VOCAB_SIZES = {"byte_bpe": 1000, "bpe": 600, "unigram": 600}
BYTE_ALPHABET_SIZE = 256
MULTILINGUAL = "Größe und Maß. Le café est près d'ici. Москва — столица. 東京は日本の首都です。 1984 2024 3.14159"
TRICKY_TEXTS = [
    "", " ", "  leading and trailing  ", "a   b", "\n\n\tindented\n    code\r\n", "▁", "▁▁ ▁x ▁", "<0x41><0xE2>",
    "<unk><pad>", "\x00\x01\x7f\x80\x9f", "😀👩‍👩‍👧 🇫🇷", "東京", "e\u0301 \ufeff\u200b", "\U0010ffff\ue000",
]


@pytest.fixture(scope="module")
def texts():
    return bundled_corpus(100_000).split("\n\n") + [MULTILINGUAL] * 5


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizers(texts):
    return {kind: train_tokenizer(texts, VOCAB_SIZES[kind], kind) for kind in KINDS}


@pytest.fixture(scope="module")
def tokenizer(tokenizers, kind):
    return tokenizers[kind]


@pytest.fixture(scope="module")
def saved_paths(tokenizers, tmp_path_factory):
    return {kind: save_tokenizer(tokenizer, tmp_path_factory.mktemp(kind)) for kind, tokenizer in tokenizers.items()}


@pytest.fixture(scope="module")
def transformers_tokenizer(saved_paths, kind):
    return PreTrainedTokenizerFast(tokenizer_file=saved_paths[kind])


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
@example(text="".join(TRICKY_TEXTS))
def test_decoding_restores_any_text(tokenizer, kind, text):
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < VOCAB_SIZES[kind] for i in ids)
    assert decode(tokenizer, ids) == text


@given(data=st.binary(), cut=st.integers(min_value=0))
def test_decoded_bytes_are_the_utf8_bytes_even_inside_a_character(tokenizer, data, cut):
    text = data.decode("utf-8", errors="replace")
    ids = tokenizer.encode(text).ids
    assert decode(tokenizer, ids) == text
    assert decode_bytes(tokenizer, ids) == text.encode("utf-8")
    cut = cut % (len(ids) + 1)
    assert text.encode("utf-8").startswith(decode_bytes(tokenizer, ids[:cut]))


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_decoding_restores_tricky_text(tokenizer, text):
    assert decode(tokenizer, tokenizer.encode(text).ids) == text


@settings(deadline=None)
@given(text=st.text())
@example(text="".join(TRICKY_TEXTS))
def test_transformers_encodes_and_decodes_like_tokenizers(tokenizer, transformers_tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert transformers_tokenizer.encode(text, add_special_tokens=False) == ids
    assert transformers_tokenizer.decode(ids) == text


def test_vocabulary_has_the_requested_size_with_special_tokens_first(tokenizer, kind):
    assert tokenizer.get_vocab_size() == VOCAB_SIZES[kind]
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    assert tokenizer.token_to_id(PAD) == 1


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_byte_pieces_follow_the_special_tokens_in_the_model_vocabulary(tokenizers, saved_paths, kind):
    tokenizer = tokenizers[kind]
    assert tokenizer.token_to_id(UNKNOWN) == 2
    assert [tokenizer.id_to_token(3 + byte) for byte in range(256)] == [f"<0x{byte:02X}>" for byte in range(256)]
    with open(saved_paths[kind], encoding="utf-8") as stream:
        saved = json.load(stream)
    assert [token["content"] for token in saved["added_tokens"]] == [END_OF_TEXT, PAD, UNKNOWN]
    assert saved["model"]["byte_fallback"] is True


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("character", ["😀", "ǅ", "\x07", "▁"])
def test_unseen_characters_fall_back_to_their_utf8_bytes(tokenizers, texts, kind, character):
    assert not any(character in text for text in texts)
    tokenizer = tokenizers[kind]
    assert tokenizer.encode(character).tokens == [f"<0x{byte:02X}>" for byte in character.encode("utf-8")]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@given(digits=st.text(alphabet="0123456789", min_size=1))
def test_digits_are_split_one_per_token(tokenizers, kind, digits):
    tokenizer = tokenizers[kind]
    assert tokenizer.encode(digits).tokens == list(digits)
    assert tokenizer.encode(f"in {digits}.").tokens[-len(digits) - 1:-1] == list(digits)


def test_byte_level_splits_digits_on_request():
    tokenizer = train_tokenizer(["12 123 1234 12345"] * 20, 300, "byte_bpe", split_digits=True, min_frequency=1)
    assert tokenizer.encode("12345").tokens == ["1", "2", "3", "4", "5"]


def test_common_words_are_single_tokens(tokenizers, kind):
    tokenizer = tokenizers[kind]
    space = "Ġ" if kind == "byte_bpe" else " "
    assert tokenizer.encode(" the").tokens == [f"{space}the"]
    assert len(tokenizer.encode("Return the value").ids) <= 5


def test_first_merge_is_the_most_frequent_pair():
    # "ab ab ab" pre-tokenises to "ab", "Ġab", "Ġab": the pair (a, b) occurs 3 times, (Ġ, a) twice.
    tokenizer = train_bpe_tokenizer(["ab ab ab"], vocab_size=BYTE_ALPHABET_SIZE + 2 + 1)
    assert tokenizer.encode("ab").tokens == ["ab"]
    assert tokenizer.encode(" ab").tokens == ["Ġ", "ab"]
    # SentencePiece-style: the pre-tokens are "ab", " ab", " ab" over characters a, b and space.
    tokenizer = train_tokenizer(["ab ab ab"], vocab_size=3 + BYTE_ALPHABET_SIZE + 3 + 1, kind="bpe")
    assert tokenizer.encode(" ab").tokens == [" ", "ab"]
    assert tokenizer.get_vocab_size() == 3 + BYTE_ALPHABET_SIZE + 3 + 1


@pytest.mark.parametrize("objective", ["span_corruption", "ul2", "glm", "mlm"])
def test_special_tokens_are_single_ids_that_decode_back(kind, objective):
    specials = objective_special_tokens(objective, sentinels=3)
    tokenizer = train_tokenizer(["some text [to] <train> on, " * 10], 400, kind, special_tokens=specials)
    assert [tokenizer.id_to_token(i) for i in range(2 + len(specials))] == [END_OF_TEXT, PAD, *specials]
    for id, token in enumerate((END_OF_TEXT, PAD, *specials)):
        assert tokenizer.encode(token).ids == [id]
        ids = tokenizer.encode(f"a {token}b").ids
        assert ids.count(id) == 1
        assert decode(tokenizer, ids) == f"a {token}b"
        assert decode_bytes(tokenizer, ids) == f"a {token}b".encode("utf-8")


def test_objective_special_tokens():
    assert objective_special_tokens("causal") == objective_special_tokens("prefix_lm") == ()
    assert objective_special_tokens("span_corruption", sentinels=2) == ("<extra_id_0>", "<extra_id_1>")
    assert len(objective_special_tokens("span_corruption")) == 100
    assert objective_special_tokens("ul2", sentinels=1) == ("[R]", "[S]", "[X]", "<extra_id_0>")
    assert objective_special_tokens("glm") == ("[MASK]", "[sMASK]", "[gMASK]", "<|startofpiece|>", "<|endofpiece|>")
    assert objective_special_tokens("mlm") == (MASK,)
    assert GENERATION_MASK == "[gMASK]"
    with pytest.raises(ConfigError, match="unknown objective 'gpt'"):
        objective_special_tokens("gpt")


def test_training_is_deterministic(kind):
    texts = bundled_corpus(30_000).split("\n\n") + [MULTILINGUAL, "rare: ǅ ʬ ⅷ"]
    first, second = (train_tokenizer(texts, 450, kind).to_str() for _ in range(2))
    assert first == second


def test_covered_characters_keep_the_most_frequent_within_the_coverage_and_limit():
    texts = ["aaaaaaab", "bbc"]  # a: 7, b: 3, c: 1 of 11
    assert covered_characters(texts, 1.0, limit=10) == "abc"
    assert covered_characters(texts, 0.9, limit=10) == "ab"  # 10 / 11 >= 0.9
    assert covered_characters(texts, 0.5, limit=10) == "a"
    assert covered_characters(texts, 1.0, limit=2) == "ab"


def test_saved_file_loads_back(tokenizer, saved_paths, kind):
    loaded = load_tokenizer(os.path.dirname(saved_paths[kind]))
    assert loaded.to_str() == tokenizer.to_str()


def test_missing_tokenizer_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no tokenizer file"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind, smallest", [("byte_bpe", 258), ("bpe", 260), ("unigram", 260)])
def test_too_small_vocabulary_is_a_data_error(kind, smallest):
    with pytest.raises(DataError, match=f"vocab_size {smallest - 1} is too small"):
        train_tokenizer(["text"], vocab_size=smallest - 1, kind=kind)
    train_tokenizer(["text"], vocab_size=smallest, kind=kind)


def test_empty_texts_and_unknown_kind_are_errors(kind):
    with pytest.raises(DataError, match="no text to train"):
        train_tokenizer(["", ""], 400, kind)
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer(["text"], 400, "wordpiece")


def test_lone_surrogates_in_training_text_are_replaced(kind):
    tokenizer = train_tokenizer(["bad \ud800 surrogate " * 5], 400, kind)
    assert decode(tokenizer, tokenizer.encode("bad surrogate").ids) == "bad surrogate"


# --- the command ---------------------------------------------------------------------------------------------


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)), encoding="utf-8")
    return path


def test_train_tokenizer_command_writes_a_tokenizer_transformers_loads(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", ["The cat sat on the mat. 2024 was a year.", "Ein Hund 🐕 lief weg."] * 20)
    out = tmp_path / "tok"
    assert main(["data", "train-tokenizer", str(source), "--out", str(out), "--kind", "unigram", "--vocab-size", "320",
                 "--objective", "span_corruption", "--sentinels", "2", "--special-token", "<|user|>",
                 "--max-documents", "30", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert report["vocab_size"] == len(loaded) <= 320 and report["documents"] == 30 and report["kind"] == "unigram"
    assert loaded.convert_ids_to_tokens(list(range(6))) == [END_OF_TEXT, PAD, "<extra_id_0>", "<extra_id_1>", "<|user|>", UNKNOWN]
    text = "The dog 🐕 ran in 1999 <extra_id_1>."
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    assert [name for name in os.listdir(out)] == ["tokenizer.json"]


@pytest.mark.parametrize("arguments, message", [
    (["missing.jsonl", "--vocab-size", "400"], "missing.jsonl"),
    (["in.jsonl", "--vocab-size", "100"], "vocab_size 100 is too small"),
    (["empty.jsonl", "--vocab-size", "400"], "no text to train"),
    (["in.jsonl", "--vocab-size", "400", "--max-documents", "0"], "--max-documents 0"),
])
def test_train_tokenizer_command_rejects_bad_input(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", ["some text"])
    write_jsonl(tmp_path / "empty.jsonl", [])
    assert main(["data", "train-tokenizer", *arguments, "--out", "tok", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not (tmp_path / "tok" / "tokenizer.json").exists()
