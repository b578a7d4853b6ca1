"""Decontamination: a training document sharing a 13-word run with an evaluation example is
dropped (or flagged); one sharing only 12 words is kept. Real GSM8K and HumanEval files from
../shared/data when present."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from llmlab.data.decontaminate import ContaminationIndex, decontaminate
from llmlab.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
EVAL_SENTENCE = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def write_jsonl(path, records, compress=False):
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def tiny_index(tmp_path):
    index = ContaminationIndex()
    index.add_file(write_jsonl(tmp_path / "tiny_eval.jsonl", [{"text": EVAL_SENTENCE}, {"text": "too short to index"}]))
    return index


def test_thirteen_shared_words_contaminate_twelve_do_not(tiny_index):
    words = EVAL_SENTENCE.split()
    # case and punctuation differences do not hide the overlap
    thirteen = "Preamble. " + ", ".join(words[:13]).upper() + " and more."
    twelve = "Preamble " + " ".join(words[:12]) + " and more, " + " ".join(words[1:13])
    assert tiny_index.overlaps(thirteen) == {"tiny_eval"}
    assert tiny_index.overlaps(twelve) == set()
    assert tiny_index.too_short == {"tiny_eval": 1}


def test_drop_and_flag_modes(tiny_index):
    documents = [{"text": "clean text", "meta": {"id": 1}}, {"text": "x " + EVAL_SENTENCE, "meta": {"id": 2}}]
    counts = Counter()
    assert [d["meta"]["id"] for d in decontaminate(documents, tiny_index, counts)] == [1]
    assert counts == {"clean": 1, "contaminated": 1, "contaminated_by_tiny_eval": 1}
    flagged = list(decontaminate(documents, tiny_index, mode="flag"))
    assert [d["meta"].get("contaminated") for d in flagged] == [None, ["tiny_eval"]]


def test_eval_file_without_known_fields_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"label": 1}])
    with pytest.raises(DataError, match="odd.jsonl"):
        ContaminationIndex().add_file(path)


def test_gzip_eval_file_with_humaneval_fields(tmp_path):
    record = {"prompt": "def add(a, b):\n    \"\"\"Return the sum of the two numbers a and b, which may be negative.\"\"\"\n",
              "canonical_solution": "    return a + b\n"}
    index = ContaminationIndex()
    index.add_file(write_jsonl(tmp_path / "mini_humaneval.jsonl.gz", [record], compress=True))
    assert index.overlaps("# copied\n" + record["prompt"]) == {"mini_humaneval"}


@pytest.mark.skipif(not (SHARED / "gsm8k" / "test.jsonl").is_file(), reason="../shared/data/gsm8k is absent")
def test_gsm8k_question_planted_in_a_training_document():
    index = ContaminationIndex()
    index.add_file(SHARED / "gsm8k" / "test.jsonl")
    assert index.examples["test"] == 1319
    with open(SHARED / "gsm8k" / "test.jsonl", encoding="utf-8") as stream:
        example = json.loads(stream.readlines()[100])
    planted = "Some forum post about homework.\n\n" + example["question"] + "\n\nAny ideas?"
    clean = "The weather was pleasant and the children played in the park until the evening came."
    documents = [{"text": clean, "meta": {}}, {"text": planted, "meta": {}}, {"text": example["answer"], "meta": {}}]
    kept = list(decontaminate(documents, index))
    assert [d["text"] for d in kept] == [clean]


@pytest.mark.skipif(not (SHARED / "HumanEval.jsonl.gz").is_file(), reason="../shared/data/HumanEval.jsonl.gz is absent")
def test_humaneval_solution_planted_in_a_training_document():
    index = ContaminationIndex()
    index.add_file(SHARED / "HumanEval.jsonl.gz")
    with gzip.open(SHARED / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as stream:
        example = json.loads(stream.readline())
    assert index.overlaps("import os\n\n" + example["prompt"] + example["canonical_solution"]) == {"HumanEval"}
    assert index.overlaps("def unrelated(x):\n    return x * 2\n") == set()
