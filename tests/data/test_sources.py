import gzip
import json
import re
import time
import tracemalloc
from collections import Counter

import pytest

from llmlab.data.sources import SourceConfig, read_source, read_unit, source_units
from llmlab.errors import DataError

pyarrow = pytest.importorskip("pyarrow")
parquet = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")


def read_all(config: SourceConfig) -> tuple[list[dict], Counter]:
    counts = Counter()
    return list(read_source(config, counts)), counts


def texts(documents: list[dict]) -> list[str]:
    return [document["text"] for document in documents]


def write(path, data: bytes | str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- plain text ---------------------------------------------------------------------------------------------------


def test_directory_of_text_files_one_document_per_file_in_sorted_path_order(tmp_path):
    root = tmp_path / "corpus"
    write(root / "z.txt", "last file")
    write(root / "sub" / "deeper" / "c", "no suffix\n")
    write(root / "sub" / "b.md", "# markdown\n\nbody")
    write(root / "a.txt", "first file")
    write(root / "sub-x.txt", "after the sub directory")
    write(root / ".hidden", "left out")
    write(root / ".git" / "config", "left out")
    (root / "broken-link").symlink_to(root / "nowhere")
    documents, counts = read_all(SourceConfig(str(root)))
    expected = ["first file", "# markdown\n\nbody", "no suffix\n", "after the sub directory", "last file"]
    assert texts(documents) == expected
    assert [document["meta"] for document in documents[:2]] == [
        {"source": "corpus", "path": str(root / "a.txt")},
        {"source": "corpus", "path": str(root / "sub" / "b.md")},
    ]
    assert counts == Counter(documents=5)


def test_blank_line_blocks_with_their_index(tmp_path):
    path = write(tmp_path / "notes.txt", "\ufeffpara one\nline two\n\n\n  \t\npara two\r\n\r\npara three")
    documents, counts = read_all(SourceConfig(str(path), split_by="blank_line", name="notes"))
    assert texts(documents) == ["para one\nline two", "para two", "para three"]
    assert [document["meta"] for document in documents] == [
        {"source": "notes", "path": str(path), "block": index} for index in range(3)
    ]
    assert counts == Counter(documents=3)


def test_glob_picks_matching_files_only(tmp_path):
    write(tmp_path / "d" / "b.txt", "B")
    write(tmp_path / "d" / "a.txt", "A")
    write(tmp_path / "d" / "c.md", "C")
    documents, _ = read_all(SourceConfig(str(tmp_path / "d" / "*.txt")))
    assert texts(documents) == ["A", "B"]
    assert documents[0]["meta"]["source"] == "d"


# --- JSONL --------------------------------------------------------------------------------------------------------

JSONL_LINES = [
    '{"text": "hello", "id": 1, "lang": "en"}',
    "",
    '{"content": "no text field"}',
    "{bad json",
    "[1, 2]",
    '{"text": 5}',
    '{"text": "   "}',
    '{"text": "world", "source": "wiki", "path": "p"}',
]


def test_jsonl_keeps_other_fields_as_meta_and_counts_bad_lines(tmp_path):
    path = write(tmp_path / "web.jsonl", "\n".join(JSONL_LINES) + "\n")
    documents, counts = read_all(SourceConfig(str(path)))
    assert documents == [
        {"text": "hello", "meta": {"source": "web", "path": str(path), "line": 1, "id": 1, "lang": "en"}},
        {
            "text": "world",
            "meta": {"source": "web", "path": str(path), "line": 8, "source_field": "wiki", "path_field": "p"},
        },
    ]
    assert counts == Counter(documents=2, skipped_invalid_json=2, skipped_missing_text=2, skipped_empty=1)


def test_jsonl_text_field_is_selectable(tmp_path):
    path = write(tmp_path / "web.jsonl", "\n".join(JSONL_LINES))
    documents, counts = read_all(SourceConfig(str(path), text_field="content"))
    assert documents == [{"text": "no text field", "meta": {"source": "web", "path": str(path), "line": 3}}]
    assert counts == Counter(documents=1, skipped_missing_text=4, skipped_invalid_json=2)


def test_gzip_and_zstd_copies_give_identical_documents(tmp_path):
    data = ("\n".join(JSONL_LINES) + "\n").encode()
    plain = write(tmp_path / "plain" / "web.jsonl", data)
    gz = write(tmp_path / "gz" / "web.jsonl.gz", gzip.compress(data))
    compressor = zstandard.ZstdCompressor()
    # two frames, as parallel compressors write them
    zst = write(tmp_path / "zst" / "web.jsonl.zst", compressor.compress(data[:50]) + compressor.compress(data[50:]))
    results = [read_all(SourceConfig(str(path))) for path in (plain, gz, zst)]
    for documents, counts in results:
        for document in documents:
            document["meta"].pop("path")
        assert (documents, counts) == results[0]
    text_gz = write(tmp_path / "notes.txt.gz", gzip.compress(b"a\n\nb"))
    assert texts(read_all(SourceConfig(str(text_gz), split_by="blank_line"))[0]) == ["a", "b"]


# --- Parquet ------------------------------------------------------------------------------------------------------


def write_parquet(path, rows: dict, row_group_size: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(pyarrow.table(rows), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_with_other_columns_as_meta_cut_into_row_group_units(tmp_path):
    rows = {"text": [f"doc {i}" for i in range(10)], "id": list(range(10)), "score": [i / 2 for i in range(10)]}
    rows["text"][4] = None
    path = write_parquet(tmp_path / "t.parquet", rows, row_group_size=3)  # row groups of 3, 3, 3, 1 rows
    config = SourceConfig(str(path), rows_per_unit=5)
    units = source_units(config)
    assert [(unit.start, unit.stop) for unit in units] == [(0, 2), (2, 4)]
    counts = Counter()
    second = list(read_unit(units[1], counts))
    assert texts(second) == ["doc 6", "doc 7", "doc 8", "doc 9"]
    assert second[0]["meta"] == {"source": "t", "path": str(path), "row": 6, "id": 6, "score": 3.0}
    documents, counts = read_all(config)
    assert texts(documents) == [f"doc {i}" for i in range(10) if i != 4]
    assert counts == Counter(documents=9, skipped_missing_text=1)


def test_parquet_binary_text_column_is_decoded_with_replacement(tmp_path):
    path = write_parquet(tmp_path / "b.parquet", {"body": [b"caf\xe9", b"ok"]}, row_group_size=10)
    documents, counts = read_all(SourceConfig(str(path), text_field="body"))
    assert texts(documents) == ["caf\ufffd", "ok"]
    assert counts == Counter(documents=2, replaced_invalid_utf8=1)


def test_parquet_unknown_or_non_text_column_is_a_data_error(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"body": ["x"], "n": [1]}, row_group_size=10)
    with pytest.raises(DataError, match="has no column 'text'.*body, n"):
        source_units(SourceConfig(str(path)))
    with pytest.raises(DataError, match="column 'n' .* holds int64, not text"):
        source_units(SourceConfig(str(path), text_field="n"))


# --- Hugging Face datasets ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_datasets():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def test_saved_hf_dataset_and_dataset_dict_read_offline_in_row_ranges(tmp_path, hf_datasets):
    dataset = hf_datasets.Dataset.from_dict({"text": ["a", "b", "", "d", "e"], "id": [1, 2, 3, 4, 5]})
    dataset.save_to_disk(str(tmp_path / "saved"))
    config = SourceConfig(str(tmp_path / "saved"), rows_per_unit=2)  # auto: a save_to_disk directory is "hf"
    units = source_units(config)
    assert [(unit.start, unit.stop) for unit in units] == [(0, 2), (2, 4), (4, 5)]
    documents, counts = read_all(config)
    assert texts(documents) == ["a", "b", "d", "e"]
    assert documents[2]["meta"] == {"source": "saved", "path": str(tmp_path / "saved"), "row": 3, "id": 4}
    assert counts == Counter(documents=4, skipped_empty=1)

    hf_datasets.DatasetDict({"train": dataset, "test": dataset.select([3])}).save_to_disk(str(tmp_path / "dict"))
    assert texts(read_all(SourceConfig(str(tmp_path / "dict"), hf_split="test"))[0]) == ["d"]
    with pytest.raises(DataError, match="no split 'validation'"):
        source_units(SourceConfig(str(tmp_path / "dict"), hf_split="validation"))
    with pytest.raises(DataError, match="no column 'body'"):
        source_units(SourceConfig(str(tmp_path / "saved"), text_field="body"))
    with pytest.raises(DataError, match="neither an existing path nor a hub name"):  # and no network call
        source_units(SourceConfig(str(tmp_path / "missing" / "dataset"), format="hf"))


def test_hf_directory_of_data_files_streams_one_unit_per_shard(tmp_path, hf_datasets):
    (tmp_path / "files").mkdir()
    for index, rows in enumerate([["a", "b"], ["c"]]):
        hf_datasets.Dataset.from_dict({"text": rows}).to_parquet(str(tmp_path / "files" / f"part-{index}.parquet"))
    config = SourceConfig(str(tmp_path / "files"), format="hf")
    units = source_units(config)
    assert len(units) == 2
    documents, counts = read_all(config)
    assert texts(documents) == ["a", "b", "c"]
    assert [(document["meta"]["shard"], document["meta"]["row"]) for document in documents] == [(0, 0), (0, 1), (1, 0)]
    assert counts == Counter(documents=3)


# --- the bundled corpus -------------------------------------------------------------------------------------------


def test_bundled_corpus_is_one_unit_with_file_and_name_in_meta():
    from llmlab.data.corpus import bundled_documents

    config = SourceConfig("bundled", bundled_max_chars=20_000)
    assert [unit.id for unit in source_units(config)] == ["bundled"]
    documents, counts = read_all(config)
    expected = bundled_documents(20_000)
    assert texts(documents) == texts(expected)
    first = expected[0]["meta"]
    assert documents[0]["meta"] == {"source": "bundled", "path": first["source"], "name": first["name"]}
    assert counts["documents"] == len(expected) > 5


# --- bad input ----------------------------------------------------------------------------------------------------


def test_binary_empty_and_invalid_utf8_files_are_skipped_or_repaired_and_counted(tmp_path):
    root = tmp_path / "mixed"
    write(root / "1-nul.txt", b"text then \0 a NUL byte")
    write(root / "2-noise.bin", bytes(range(128, 256)) * 8)  # no NUL, but nothing in it decodes
    write(root / "3-empty.txt", b"")
    write(root / "4-blank.txt", b" \n\t\n")
    write(root / "5-latin1.txt", "café au lait".encode("latin-1"))
    write(root / "6-good.txt", "naïve".encode())
    write(root / "7-nul.jsonl", b'{"text": "a"}\n\0\0\0')
    write(root / "8-empty.jsonl", b"")
    documents, counts = read_all(SourceConfig(str(root)))
    assert texts(documents) == ["caf\ufffd au lait", "naïve"]
    assert counts == Counter(documents=2, skipped_binary=3, skipped_empty=3, replaced_invalid_utf8=1)


def test_invalid_utf8_inside_a_jsonl_string_is_replaced_and_counted(tmp_path):
    path = write(tmp_path / "x.jsonl", b'{"text": "caf\xe9"}\n{"text": "fine", "k": "\xff"}\n{"text": "ok"}\n')
    documents, counts = read_all(SourceConfig(str(path)))
    assert texts(documents) == ["caf\ufffd", "fine", "ok"]
    assert documents[1]["meta"]["k"] == "\ufffd"
    assert counts == Counter(documents=3, replaced_invalid_utf8=2)


def test_a_long_text_file_is_read_in_full_as_parts_ending_at_line_ends(tmp_path):
    path = write(tmp_path / "long.txt", "a" * 15 + "é" * 20)  # the 16-byte reads split é's two bytes
    documents, counts = read_all(SourceConfig(str(path), max_document_chars=3))
    assert texts(documents) == ["aaa"] * 5 + ["ééé"] * 6 + ["éé"]
    assert [document["meta"]["part"] for document in documents] == list(range(12))
    assert counts == Counter(documents=12)
    path = write(tmp_path / "play.txt", b"\xef\xbb\xbfROMEO:\nO, she doth\n\nteach the torches\xff\nto burn bright!\n")
    documents, counts = read_all(SourceConfig(str(path), max_document_chars=20))
    assert texts(documents) == ["ROMEO:\nO, she doth\n\n", "teach the torches\ufffd\n", "to burn bright!\n"]
    assert counts == Counter(documents=3, replaced_invalid_utf8=1)
    documents, counts = read_all(SourceConfig(str(path)))
    assert "part" not in documents[0]["meta"] and counts == Counter(documents=1, replaced_invalid_utf8=1)


def test_long_records_are_truncated(tmp_path):
    path = write(tmp_path / "long.jsonl", json.dumps({"text": "b" * 50}) + "\n")
    documents, counts = read_all(SourceConfig(str(path), max_document_chars=10))
    assert texts(documents) == ["b" * 10]
    assert counts == Counter(documents=1, truncated=1)
    documents, counts = read_all(SourceConfig(str(path), max_document_chars=10, max_line_bytes=40))
    assert counts == Counter(skipped_long_line=1)


def test_a_100_mb_line_is_read_or_truncated_without_reading_it_into_memory(tmp_path):
    big = 100_000_000
    with open(tmp_path / "big.txt", "wb") as file:
        file.write(b"first\n\n")
        file.write(b"a" * big)
        file.write(b"\n\nlast\n")
    (tmp_path / "big.jsonl").write_bytes(b'{"text": "' + b"a" * big + b'"}\n{"text": "after"}\n')
    start = time.perf_counter()
    tracemalloc.start()
    try:
        whole = Counter()
        for document in read_source(SourceConfig(str(tmp_path / "big.txt"), max_document_chars=1000), whole):
            whole["characters"] += len(document["text"])
            whole["longest"] = max(whole["longest"], len(document["text"]))
        blocks = read_all(SourceConfig(str(tmp_path / "big.txt"), max_document_chars=1000, split_by="blank_line"))
        records = read_all(SourceConfig(str(tmp_path / "big.jsonl"), max_document_chars=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole == Counter(documents=100_002, characters=big + 14, longest=1000)
    assert texts(blocks[0]) == ["first", "a" * 1000, "last"] and blocks[1] == Counter(documents=3, truncated=1)
    assert texts(records[0]) == ["after"] and records[1] == Counter(documents=1, skipped_long_line=1)
    assert peak < 8_000_000, f"reading allocated {peak} bytes at its peak"
    assert time.perf_counter() - start < 30  # generous: the machine is shared; memory is checked above


def test_missing_paths_formats_and_corrupt_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        source_units(SourceConfig(str(tmp_path / "nowhere")))
    with pytest.raises(DataError, match="matches no file"):
        source_units(SourceConfig(str(tmp_path / "*.jsonl")))
    with pytest.raises(DataError, match="format 'xml' is not one of"):
        SourceConfig(str(tmp_path), format="xml")
    with pytest.raises(DataError, match="split_by 'page'"):
        SourceConfig(str(tmp_path), split_by="page")
    with pytest.raises(DataError, match="not.parquet"):
        source_units(SourceConfig(str(write(tmp_path / "not.parquet", b"PAR1 but no"))))
    corrupt = write(tmp_path / "c.jsonl.gz", gzip.compress(b'{"text": "x"}\n' * 1000)[:-30])
    with pytest.raises(DataError, match="c.jsonl.gz"):
        read_all(SourceConfig(str(corrupt)))
    corrupt = write(tmp_path / "c.txt.zst", b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(DataError, match="c.txt.zst"):
        read_all(SourceConfig(str(corrupt)))


def test_unit_ids_are_unique_filesystem_safe_and_stable(tmp_path):
    write(tmp_path / "d" / "a__b.txt", "1")
    write(tmp_path / "d" / "a" / "b.txt", "2")
    write(tmp_path / "d" / "sp ace & ü.txt", "3")
    config = SourceConfig(str(tmp_path / "d"))
    ids = [unit.id for unit in source_units(config)]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", unit_id) for unit_id in ids)
    assert ids == [unit.id for unit in source_units(config)]
    counts = Counter()
    by_unit = [document for unit in source_units(config) for document in read_unit(unit, counts)]
    assert by_unit == read_all(config)[0]


def test_jsonl_module_reads_zstd_and_reports_a_corrupt_one(tmp_path):
    from llmlab.data.jsonl import ReadCounts, read_documents

    data = b'{"text": "one", "id": 1}\nnot json\n{"text": "two"}\n'
    plain = write(tmp_path / "a.jsonl", data)
    zst = write(tmp_path / "a.jsonl.zst", zstandard.ZstdCompressor().compress(data))
    counts = ReadCounts()
    assert list(read_documents(zst, counts)) == list(read_documents(plain)) == [
        {"text": "one", "meta": {"id": 1}},
        {"text": "two", "meta": {}},
    ]
    assert counts.as_dict() == {"lines": 3, "documents": 2, "skipped": {"invalid_json": 1}}
    corrupt = write(tmp_path / "b.jsonl.zst", b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(DataError, match="b.jsonl.zst"):
        list(read_documents(corrupt))
