"""Token shards: what is written reads back exactly, and damaged or foreign shard directories are refused."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.data.shards import INDEX_FILE, ShardWriter, TokenShards, token_dtype, write_index, write_shard
from llmlab.errors import DataError

EOS = 0


def write(directory, shards, vocab_size=1000):
    """Write lists of documents as shards a, b, c, ... and the index."""
    entries = [write_shard(directory, name, documents, token_dtype(vocab_size), EOS)
               for name, documents in zip("abcdefgh", shards)]
    write_index(directory, entries, vocab_size, EOS)
    return TokenShards(directory)


def expected_stream(shards):
    """The reference stream: every document's ids followed by EOS, in order."""
    return [token for documents in shards for document in documents for token in [*document, EOS]]


documents = st.lists(st.lists(st.integers(1, 999), max_size=20), max_size=6)


@settings(max_examples=40, deadline=None)
@given(shards=st.lists(documents, min_size=1, max_size=4), data=st.data())
def test_written_documents_read_back_exactly_across_shard_boundaries(tmp_path_factory, shards, data):
    stream = expected_stream(shards)
    reader = write(tmp_path_factory.mktemp("shards"), shards)
    assert reader.tokens == len(stream) and reader.documents == sum(map(len, shards))
    start = data.draw(st.integers(0, len(stream)))
    length = data.draw(st.integers(0, len(stream) - start))
    assert reader.read(start, length).tolist() == stream[start:start + length]
    lengths = [len(document) + 1 for documents in shards for document in documents]
    assert reader.document_starts().tolist() == np.cumsum([0, *lengths])[:-1].tolist()


def test_the_token_type_is_uint16_up_to_65536_ids_then_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    assert token_dtype(65536).byteorder in "<=" and token_dtype(2) == np.dtype("<u2")


def test_ids_beyond_uint16_round_trip_through_uint32_files(tmp_path):
    shards = [[[70000, 1, 2**32 - 1], [65536]]]
    reader = write(tmp_path, shards, vocab_size=2**32)
    assert reader.dtype == np.uint32 and (tmp_path / "a.tokens").stat().st_size == 6 * 4
    assert reader.read(0, 6).tolist() == [70000, 1, 2**32 - 1, EOS, 65536, EOS]
    assert np.fromfile(tmp_path / "a.tokens", dtype="<u4").tolist() == [70000, 1, 2**32 - 1, 0, 65536, 0]


def test_an_id_that_does_not_fit_the_type_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(DataError, match="document 1 of shard a"):
        write_shard(tmp_path, "a", [[1, 2], [65536]], token_dtype(1000), EOS)
    assert list(tmp_path.iterdir()) == []


def test_the_writer_rolls_shards_without_splitting_documents(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=1000, eos_token_id=EOS, shard_tokens=5)
    documents = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10]]
    for document in documents:
        writer.add(document)
    writer.close()
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert [(e["tokens"], e["documents"]) for e in index["shards"]] == [(6, 2), (6, 1), (2, 1)]
    reader = TokenShards(tmp_path)
    assert reader.read(0, reader.tokens).tolist() == expected_stream([documents])
    reader.verify()


@pytest.fixture
def shard_dir(tmp_path):
    write(tmp_path, [[[1, 2, 3], [4, 5]], [[6, 7, 8, 9]]])
    return tmp_path


def test_a_directory_without_an_index_is_refused(shard_dir):
    (shard_dir / INDEX_FILE).unlink()
    with pytest.raises(DataError, match=f"{shard_dir} has no index.json"):
        TokenShards(shard_dir)


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        TokenShards(tmp_path / "nothing")


@pytest.mark.parametrize("file", ["a.tokens", "b.tokens", "a.docs"])
def test_a_truncated_shard_file_is_refused_by_name(shard_dir, file):
    path = shard_dir / file
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match=str(path)):
        TokenShards(shard_dir)


def test_a_missing_shard_file_is_refused_by_name(shard_dir):
    (shard_dir / "b.tokens").unlink()
    with pytest.raises(DataError, match="b.tokens"):
        TokenShards(shard_dir)


def test_a_shard_of_the_wrong_token_size_is_refused(shard_dir):
    # the same ids stored as uint32: twice the bytes the uint16 index expects
    (shard_dir / "a.tokens").write_bytes(np.array([1, 2, 3, 0, 4, 5, 0], dtype="<u4").tobytes())
    with pytest.raises(DataError, match="a.tokens"):
        TokenShards(shard_dir)


def test_a_foreign_file_of_the_right_size_fails_verification(shard_dir):
    path = shard_dir / "a.tokens"
    path.write_bytes(bytes(reversed(path.read_bytes())))
    reader = TokenShards(shard_dir)
    with pytest.raises(DataError, match=str(path)):
        reader.verify()


@pytest.mark.parametrize("change", [{"dtype": "uint32"}, {"format": "other"}, {"shards": "x"}])
def test_an_index_that_does_not_fit_is_refused(shard_dir, change):
    path = shard_dir / INDEX_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DataError, match="index.json"):
        TokenShards(shard_dir)


def test_llmlab_data_tokenize_writes_each_documents_ids_and_refuses_bad_input(tmp_path, capsys):
    from llmlab.cli.main import main
    from llmlab.data.tokenizer import END_OF_TEXT, train_bpe_tokenizer

    texts = ["Return the sum of a list.", "Raise ValueError when it is empty.", "héllo wörld"]
    tokenizer = train_bpe_tokenizer(texts * 5, 300)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts))
                                       + "not json\n")
    arguments = ["data", "tokenize", str(tmp_path / "in.jsonl"), "--tokenizer", str(tmp_path), "--out",
                 str(tmp_path / "shards"), "--shard-tokens", "8", "--no-progress"]
    assert main(arguments) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 3 and report["counts"]["skipped_invalid_json"] == 1
    reader = TokenShards(tmp_path / "shards")
    eos = tokenizer.token_to_id(END_OF_TEXT)
    expected = [token for text in texts for token in [*tokenizer.encode(text).ids, eos]]
    assert reader.read(0, reader.tokens).tolist() == expected and report["shards"] == len(reader.index["shards"]) > 1
    assert (tmp_path / "shards" / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()
    before = sorted(path.name for path in tmp_path.iterdir())
    assert main(arguments) == 2  # the directory exists
    assert main([*arguments[:2], str(tmp_path / "missing.jsonl"), *arguments[3:5], "--out", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err
    assert "shards already exists" in errors and "missing.jsonl" in errors
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_tokenize_reads_a_text_file_over_a_million_characters_in_full_and_warns_of_truncation(tmp_path, capsys):
    from llmlab.cli.main import main
    from llmlab.data.tokenizer import END_OF_TEXT, train_tokenizer

    play = "".join(f"LINE {i}:\nWherefore art thou, number {i}?\n\n" for i in range(30_000))
    assert len(play) > 1_100_000
    (tmp_path / "play.txt").write_text(play)
    tokenizer = train_tokenizer([play[:20_000]], 300)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    arguments = ["data", "tokenize", "--tokenizer", str(tmp_path / "tokenizer.json"), "--no-progress", "--out"]
    assert main([*arguments, str(tmp_path / "shards"), str(tmp_path / "play.txt")]) == 0
    output = capsys.readouterr()
    assert json.loads(output.out)["documents"] == 2 and output.err == ""
    ids = TokenShards(tmp_path / "shards").read(0, TokenShards(tmp_path / "shards").tokens).tolist()
    eos = tokenizer.token_to_id(END_OF_TEXT)
    assert ids.count(eos) == 2 and tokenizer.decode([i for i in ids if i != eos]) == play
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": play}) + "\n" + json.dumps({"text": "short"}) + "\n")
    assert main([*arguments, str(tmp_path / "records"), str(tmp_path / "long.jsonl")]) == 0
    output = capsys.readouterr()
    assert json.loads(output.out)["counts"]["truncated"] == 1
    assert output.err.startswith("warning: 1 documents") and "truncated" in output.err and output.err.count("\n") == 1
