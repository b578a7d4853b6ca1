"""`llmlab data filter|pii|decontaminate|langid|train-classifier|train-ngram`: JSONL in, JSONL out,
order kept, other fields passed through, bad lines skipped and counted (exit 0), a missing
input file is one sentence and exit 2, and a failed run leaves no output file behind."""

import json
import subprocess
import sys

import pytest

from llmlab.cli.main import main

GOOD_TEXT = "\n".join([
    "The committee met on Thursday to discuss the budget for the coming year and the plans that it will have.",
    "Members agreed that the new library should be built with money from the city and from private donors.",
    "The mayor said that the project would be finished within two years if the weather allowed the work.",
    "Several residents asked whether the old building could be kept and turned into a museum for the town.",
    "The next meeting of the committee will take place in the town hall at the beginning of the next month.",
])


def write_lines(path, lines):
    with open(path, "wb") as stream:
        for line in lines:
            stream.write(line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode() + b"\n")
            if isinstance(line, bytes):
                stream.write(b"\n")
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def report(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def messy_input(tmp_path):
    return write_lines(tmp_path / "in.jsonl", [
        {"id": 1, "text": "Write to jane@example.com or call 555-123-4567.", "source": "web"},
        "this is not json",
        b'{"id": 2, "text": "caf\xe9 in latin-1"}',      # invalid UTF-8
        {"id": 3, "body": "no text field"},
        {"id": 4, "text": 42},                            # text is not a string
        "[1, 2, 3]",                                      # JSON but not an object
        {"id": 5, "text": "Nothing personal here.", "source": "book"},
        "",                                               # blank lines are ignored, not counted
    ])


def test_pii_command_skips_and_counts_bad_lines(messy_input, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["data", "pii", str(messy_input), str(out)]) == 0
    assert read_jsonl(out) == [
        {"text": "Write to <EMAIL> or call <PHONE>.", "id": 1, "source": "web"},
        {"text": "Nothing personal here.", "id": 5, "source": "book"},
    ]
    counts = report(capsys)
    assert counts["lines"] == 7 and counts["documents"] == 2 and counts["written"] == 2
    assert counts["skipped"] == {"invalid_json": 1, "invalid_utf8": 1, "missing_text": 2, "not_an_object": 1}
    assert counts["counts"] == {"email": 1, "phone": 1, "documents_changed": 1}


def test_filter_command_keeps_order_and_writes_rejected_with_rule(tmp_path, capsys):
    source = write_lines(tmp_path / "in.jsonl", [
        {"text": GOOD_TEXT, "id": "a"}, {"text": "Buy now!", "id": "b"}, {"text": GOOD_TEXT + "\nMore.", "id": "c"},
    ])
    out, rejected = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    assert main(["data", "filter", str(source), str(out), "--rejected", str(rejected)]) == 0
    assert [record["id"] for record in read_jsonl(out)] == ["a", "c"]
    assert read_jsonl(out)[1]["text"] == GOOD_TEXT  # C4 removed the short line
    assert read_jsonl(rejected) == [{"text": "Buy now!", "id": "b", "dropped_by": "gopher_min_words"}]
    assert report(capsys)["counts"] == {"kept": 2, "gopher_min_words": 1}


def test_filter_with_blocklist_classifier_and_perplexity(tmp_path, capsys):
    (tmp_path / "block.txt").write_text("museum\n")
    good = write_lines(tmp_path / "good.jsonl", [{"text": line} for line in GOOD_TEXT.splitlines()] * 4)
    bad = write_lines(tmp_path / "bad.jsonl", [{"text": "buy cheap pills now click here free bonus casino"}] * 20)
    assert main(["data", "train-classifier", "--good", str(good), "--bad", str(bad), str(tmp_path / "quality.npz")]) == 0
    assert main(["data", "train-ngram", str(good), str(tmp_path / "ngram.json")]) == 0
    source = write_lines(tmp_path / "in.jsonl", [
        {"text": GOOD_TEXT.splitlines()[0]}, {"text": GOOD_TEXT.splitlines()[3]}, {"text": "buy cheap pills now click here"},
    ])
    capsys.readouterr()
    assert main(["data", "filter", str(source), str(tmp_path / "out.jsonl"), "--rules", "none",
                 "--blocklist", str(tmp_path / "block.txt"), "--classifier", str(tmp_path / "quality.npz"),
                 "--ngram-model", str(tmp_path / "ngram.json"), "--max-perplexity", "1000"]) == 0
    kept = read_jsonl(tmp_path / "out.jsonl")
    assert [record["text"] for record in kept] == [GOOD_TEXT.splitlines()[0]]
    assert kept[0]["quality_score"] > 0.5 and kept[0]["perplexity"] < 1000
    assert report(capsys)["counts"] == {"kept": 1, "blocklist": 1, "quality_classifier": 1}


def test_decontaminate_command(tmp_path, capsys):
    eval_file = write_lines(tmp_path / "eval.jsonl", [
        {"question": "Janet has sixteen ducks that lay eggs every single day of the week in spring", "answer": "Sixteen."}])
    source = write_lines(tmp_path / "in.jsonl", [
        {"text": "A clean document."}, {"text": "Copied: janet has sixteen ducks that lay eggs every single day of the week!"}])
    assert main(["data", "decontaminate", str(source), str(tmp_path / "out.jsonl"), "--eval", str(eval_file)]) == 0
    assert read_jsonl(tmp_path / "out.jsonl") == [{"text": "A clean document."}]
    assert report(capsys)["counts"] == {"clean": 1, "contaminated": 1, "contaminated_by_eval": 1, "eval_examples_eval": 1}
    assert main(["data", "decontaminate", str(source), str(tmp_path / "out.jsonl"), "--eval", str(eval_file), "--mode", "flag"]) == 0
    assert [record.get("contaminated") for record in read_jsonl(tmp_path / "out.jsonl")] == [None, ["eval"]]


def test_langid_command_tags_and_keeps(tmp_path, capsys):
    source = write_lines(tmp_path / "in.jsonl", [
        {"text": "The committee will meet on Thursday to discuss the budget."},
        {"text": "Le comité se réunira jeudi pour discuter du budget de l'année."},
    ])
    assert main(["data", "langid", str(source), str(tmp_path / "tagged.jsonl")]) == 0
    assert [record["language"] for record in read_jsonl(tmp_path / "tagged.jsonl")] == ["en", "fr"]
    assert main(["data", "langid", str(source), str(tmp_path / "french.jsonl"), "--keep", "fr:0.5"]) == 0
    assert [record["language"] for record in read_jsonl(tmp_path / "french.jsonl")] == ["fr"]


@pytest.mark.parametrize("stage", ["filter", "pii", "langid", "decontaminate"])
def test_missing_input_exits_2_with_one_sentence(stage, tmp_path, capsys):
    extra = ["--eval", str(tmp_path / "in.jsonl")] if stage == "decontaminate" else []
    assert main(["data", stage, str(tmp_path / "missing.jsonl"), str(tmp_path / "out.jsonl"), *extra]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "missing.jsonl" in error
    assert list(tmp_path.iterdir()) == []


def test_failed_run_leaves_no_output(tmp_path, messy_input, monkeypatch):
    import llmlab.data.pii

    def explode(documents, counts):
        yield next(iter(documents))
        raise RuntimeError("crash in the middle")

    monkeypatch.setattr(llmlab.data.pii, "scrub_documents", explode)
    with pytest.raises(RuntimeError):
        main(["data", "pii", str(messy_input), str(tmp_path / "out.jsonl")])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]


def test_data_help_lists_the_stages():
    result = subprocess.run([sys.executable, "-m", "llmlab", "data", "--help"], capture_output=True, text=True, check=True)
    for stage in ("filter", "pii", "decontaminate", "langid", "train-classifier", "train-ngram"):
        assert stage in result.stdout


def test_unknown_rule_set_exits_2(tmp_path, capsys):
    source = write_lines(tmp_path / "in.jsonl", [{"text": GOOD_TEXT}])
    assert main(["data", "filter", str(source), str(tmp_path / "out.jsonl"), "--rules", "gopher,c5"]) == 2
    assert "'gopher'" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
