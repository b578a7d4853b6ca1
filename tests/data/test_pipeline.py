"""`llmlab data run RECIPE.yaml`: counts against a corpus built with known plants (blocked words, e-mails, exact and
near copies, bad files), shards that decode to the expected texts, byte-identical output whatever the worker
count and after SIGKILL + re-run, unknown recipe fields named with exit code 2."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmlab.cli.main import main
from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import load_pipeline_recipe, recipe_from_dict
from llmlab.errors import ConfigError

BLOCKED = "forbiddenword"


def random_text(rng: random.Random, vocabulary: list[str], words: int) -> str:
    """Sentences of random vocabulary words, WORDS words in all."""
    tokens = rng.choices(vocabulary, k=words)
    return " ".join(" ".join(tokens[i:i + 12]).capitalize() + "." for i in range(0, words, 12))


def planted_corpus(directory: Path, files: int = 4, per_file: int = 10, seed: int = 0, words: int = 120) -> list[dict]:
    """JSONL files of distinct random documents with plants; returns each record with its fate and expected text.

    Per file, document 1 contains BLOCKED (the blocklist drops it), document 2 an e-mail address (scrubbed),
    document 3 is an exact copy of the previous file's document 0 with other case and spacing, and document 4 is
    the previous file's document 5 with one word changed (a near duplicate, 5-gram Jaccard about 0.95).
    """
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(5000)]
    directory.mkdir(parents=True, exist_ok=True)
    records, previous = [], None
    for file in range(files):
        texts = [random_text(rng, vocabulary, words) for _ in range(per_file)]
        fates = ["kept"] * per_file
        expected = list(texts)
        texts[1] += f" It says {BLOCKED} here."
        fates[1] = "blocked"
        email = f"person{file}@example.com"
        texts[2] += f" Write to {email} today."
        expected[2] = texts[2].replace(email, "<EMAIL>")
        if previous is not None:
            texts[3] = "  " + previous[0].upper().replace(" ", "   ")
            fates[3] = "exact"
            tokens = previous[5].split()
            tokens[len(tokens) // 2] = "changedword"
            texts[4] = " ".join(tokens)
            fates[4] = "near"
        with open(directory / f"part{file}.jsonl", "w") as stream:
            for index, text in enumerate(texts):
                stream.write(json.dumps({"text": text, "id": f"{file}-{index}"}) + "\n")
                records.append({"id": f"{file}-{index}", "fate": fates[index], "expected": expected[index]})
        previous = texts
    return records


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def full_recipe(tmp_path: Path, corpus: Path, workers: int = 1, **extra) -> dict:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(BLOCKED + "\n")
    return {"sources": [{"path": str(corpus), "name": "web"}],
            "stages": [{"filter": {"rules": "none", "blocklist": [str(blocklist)]}}, "pii", {"dedup": {"near": True}}],
            "tokenizer": {"train": {"vocab_size": 300}}, "shards": {"tokens_per_shard": 2000}, "workers": workers,
            **extra}


def output_files(directory: Path) -> dict[str, bytes]:
    """Every file's bytes under DIRECTORY by relative path, the reports (which hold times) left out."""
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name not in ("report.json", "report.md")}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_counts_and_shards_match_the_plants(tmp_path):
    from llmlab.data.shards import TokenShards
    from llmlab.data.tokenizer import load_tokenizer

    records = planted_corpus(tmp_path / "corpus")
    recipe = recipe_from_dict(full_recipe(tmp_path, tmp_path / "corpus"))
    report = run_pipeline(recipe, tmp_path / "out", progress=False)
    fates = [record["fate"] for record in records]
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert stages["read"]["out"] == len(records)
    assert stages["filter"]["counts"] == {"blocklist": fates.count("blocked")}
    assert stages["filter"]["out"] == len(records) - fates.count("blocked")
    assert stages["pii"]["counts"] == {"email": 4, "documents_changed": 4}
    assert stages["dedup"]["counts"]["exact_duplicates"] == fates.count("exact")
    assert stages["dedup"]["counts"]["near_duplicates"] == fates.count("near")
    kept = [record["expected"] for record in records if record["fate"] == "kept"]
    assert report["documents"] == len(kept)

    shards = TokenShards(tmp_path / "out" / "shards")
    tokenizer = load_tokenizer(shards.tokenizer_file)
    starts = list(shards.document_starts()) + [shards.tokens]
    decoded = [tokenizer.decode(shards.read(start, end - start - 1).tolist()) for start, end in zip(starts, starts[1:])]
    assert decoded == kept  # in unit order, then file order; the e-mails replaced
    assert shards.tokens == report["tokens"] and len(shards.index["shards"]) > 4  # tokens_per_shard cut the units
    assert json.loads((tmp_path / "out" / "report.json").read_text())["documents"] == len(kept)
    assert "| dedup |" in (tmp_path / "out" / "report.md").read_text()


ENGLISH = ("The committee met on Thursday to discuss the budget for the coming year and the plans that it will have. "
           "Members agreed that the new library should be built with money from the city and from private donors.")
FRENCH = ("Le comité s'est réuni jeudi pour discuter du budget de l'année prochaine et des projets qu'il aura. "
          "Les membres ont convenu que la nouvelle bibliothèque serait construite avec l'argent de la ville.")
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def test_langid_decontaminate_and_no_tokenizer(tmp_path):
    import gzip

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [{"text": ENGLISH}, {"text": FRENCH}, {"text": ENGLISH.replace("Thursday", "Monday") + " " + QUESTION}]
    (corpus / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": QUESTION, "answer": "72"}) + "\n")
    recipe = recipe_from_dict({"sources": [{"path": str(corpus)}], "compression": "gzip",
                               "stages": [{"langid": {"keep": "en"}},
                                          {"decontaminate": {"eval": [str(tmp_path / "gsm8k.jsonl")]}}]})
    report = run_pipeline(recipe, tmp_path / "out", progress=False)
    stages = {stage["stage"]: stage for stage in report["stages"]}
    assert stages["langid"]["counts"] == {"language": 1} and stages["langid"]["out"] == 2
    assert stages["decontaminate"]["counts"] == {"clean": 1, "contaminated": 1, "contaminated_by_gsm8k": 1}
    assert report["documents"] == 1 and report["tokens"] is None and "tokenize" not in stages
    [cleaned] = (tmp_path / "out" / "documents").rglob("*.jsonl.gz")
    [record] = [json.loads(line) for line in gzip.open(cleaned, "rt")]
    assert record["text"] == ENGLISH and record["language"] == "en"
    assert not (tmp_path / "out" / "shards").exists()


def test_dedup_index_of_an_earlier_run_removes_what_it_saw(tmp_path):
    planted_corpus(tmp_path / "corpus", files=2, per_file=8)
    first = full_recipe(tmp_path, tmp_path / "corpus")
    run_pipeline(recipe_from_dict(first), tmp_path / "first", progress=False)
    index = str(tmp_path / "first" / "dedup" / "index")
    second = {**first, "stages": [*first["stages"][:-1], {"dedup": {"near": True, "index": index}}],
              "tokenizer": {"path": str(tmp_path / "first" / "shards" / "tokenizer.json")}}
    report = run_pipeline(recipe_from_dict(second), tmp_path / "second", progress=False)
    dedup = report["stages"][-2]
    assert dedup["stage"] == "dedup" and dedup["in"] == 14 and dedup["out"] == 0 and report["documents"] == 0
    assert dedup["counts"]["exact_duplicates"] == 14
    assert (tmp_path / "second" / "shards" / "tokenizer.json").read_bytes() == \
        (tmp_path / "first" / "shards" / "tokenizer.json").read_bytes()


def test_bad_input_is_counted_not_fatal(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)) * 4)
    (corpus / "empty.jsonl").write_bytes(b"")
    (corpus / "lines.jsonl").write_bytes(b"\n".join([
        json.dumps({"text": "A good line that is kept."}).encode(),
        b'{"text": "caf\xe9 latin-1 byte"}',
        b"this is not json",
        json.dumps({"body": "no text field"}).encode(),
    ]) + b"\n")
    # a 100 MB single line: longer than any JSONL line worth parsing, so skipped; a 1 MB text file is read in full,
    # as 11 parts of at most 100k characters (10 of them the same); a 100 MB one is read in test_sources
    line = b"word " * (20 * 1024 * 1024)
    with open(corpus / "huge.jsonl", "wb") as stream:
        stream.write(b'{"text": "' + line + b'"}\n')
    with open(corpus / "huge.txt", "wb") as stream:
        stream.write(line[: 1 << 20])
    recipe = recipe_from_dict({"sources": [{"path": str(corpus), "max_document_chars": 100_000}],
                               "stages": ["pii", {"dedup": {"near": True}}],
                               "tokenizer": {"train": {"vocab_size": 300}}})
    report = run_pipeline(recipe, tmp_path / "out", progress=False)
    read = report["stages"][0]
    assert read["counts"] == {"skipped_binary": 1, "skipped_empty": 1, "skipped_invalid_json": 1,
                              "skipped_missing_text": 1, "replaced_invalid_utf8": 1, "skipped_long_line": 1}
    assert read["out"] == 13 and report["documents"] == 4  # the good line, café, a full part, the shorter last
    assert report["stages"][-1]["counts"]["tokens"] > 0


def test_unknown_recipe_fields_are_named(tmp_path):
    corpus = tmp_path / "corpus"
    planted_corpus(corpus, files=1, per_file=6)
    base = {"sources": [{"path": str(corpus)}]}
    cases = [({**base, "wokers": 2}, "'wokers'"),
             ({"sources": [{"path": str(corpus), "txt_field": "x"}]}, "'txt_field'"),
             ({**base, "stages": [{"filter": {"ruls": "c4"}}]}, "'ruls'"),
             ({**base, "stages": ["dedupe"]}, "'dedupe'"),
             ({**base, "tokenizer": {"train": {"vocab": 300}}}, "'vocab'"),
             ({**base, "shards": {"tokens_per_shard": "many"}}, "tokens_per_shard")]
    for data, name in cases:
        with pytest.raises(ConfigError, match=name):
            recipe_from_dict(data)
    with pytest.raises(ConfigError, match="dedup stage must come once, last"):
        recipe_from_dict({**base, "stages": [{"dedup": {}}, "pii"]})


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].joinpath("recipes", "data").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_bundled_recipes_parse(path):
    recipe = load_pipeline_recipe(path)
    assert recipe.output and recipe.tokenizer is not None and recipe.dedup is not None


def test_cli_unknown_field_exits_2_naming_it(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "bad.yaml", {"sources": [{"path": "x"}], "stages": [{"pii": {"level": 3}}]})
    assert main(["data", "run", str(recipe), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "'level'" in error and len(error.splitlines()) == 1


def test_cli_runs_a_recipe_and_refuses_another_recipe_in_the_same_output(tmp_path, capsys):
    planted_corpus(tmp_path / "corpus", files=2, per_file=6)
    recipe = write_recipe(tmp_path / "r.yaml", full_recipe(tmp_path, tmp_path / "corpus", output=str(tmp_path / "out")))
    assert main(["data", "run", str(recipe), "--no-progress"]) == 0
    assert "| tokenize |" in capsys.readouterr().out
    other = write_recipe(tmp_path / "other.yaml", {"sources": [{"path": str(tmp_path / "corpus")}],
                                                   "output": str(tmp_path / "out")})
    assert main(["data", "run", str(other), "--no-progress"]) == 2
    assert "another recipe" in capsys.readouterr().err


def _finished(out: Path, pattern: str) -> int:
    try:
        return len(list(out.rglob(pattern))) if out.is_dir() else 0
    except FileNotFoundError:  # a temporary directory renamed into place while it was listed
        return 0


RNG = random.Random(0)
KILL_POINTS = {  # name: (workers of the killed run, of the re-run, files that must exist, how many, then seconds)
    "cleaning": (2, 1, "*.clean.json", RNG.randint(1, 3), RNG.uniform(0, 0.05)),
    "tokenizer trained": (1, 2, "tokenizer.json", 1, RNG.uniform(0, 0.05)),
    "tokenizing": (1, 1, "*.finished.json", RNG.randint(1, 3), RNG.uniform(0, 0.02)),
}


def test_sigkill_and_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path):
    """Killed (whole process group, workers included) at three moments, run again, maybe with another worker
    count: every output file has the bytes of a one-worker run that was never interrupted."""
    planted_corpus(tmp_path / "corpus", files=8, per_file=30, words=200)
    reference = tmp_path / "reference"
    run_pipeline(recipe_from_dict(full_recipe(tmp_path, tmp_path / "corpus")), reference, progress=False)
    expected = output_files(reference)
    for name, (workers, rerun_workers, pattern, count, delay) in KILL_POINTS.items():
        out = tmp_path / name.replace(" ", "-")
        recipe = write_recipe(tmp_path / f"{out.name}.yaml", full_recipe(tmp_path, tmp_path / "corpus", workers))
        process = subprocess.Popen([sys.executable, "-m", "llmlab", "data", "run", str(recipe), "--out", str(out),
                                    "--no-progress"], start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and _finished(out, pattern) < count and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, f"the run finished before the kill point {name!r}"
        assert not (out / "report.json").exists()
        finished = {path: path.stat().st_mtime_ns for path in (out / "units").rglob("*.json")}  # units done
        run_pipeline(load_pipeline_recipe(recipe, {"workers": rerun_workers}), out, progress=False)
        assert output_files(out) == expected, name
        assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items()), "a finished unit was redone"


def test_dedup_units_remove_lines_seen_earlier_in_the_corpus(tmp_path):
    import gzip

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    footer = "Subscribe to our newsletter for more.\n"
    files = {"a.jsonl": ["The river rose at dawn.\n" + footer, "Bread was baked twice.\n" + footer],
             "b.jsonl": [footer + "The river rose at dawn.\n", "Snow fell on the hills.\nBread was baked twice.\n"]}
    for name, texts in files.items():
        (corpus / name).write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    recipe = recipe_from_dict({"sources": [{"path": str(corpus)}], "compression": "gzip",
                               "stages": [{"dedup": {"units": "line"}}]})
    report = run_pipeline(recipe, tmp_path / "out", progress=False)
    texts = [json.loads(line)["text"] for path in sorted((tmp_path / "out" / "documents").rglob("*.jsonl.gz"))
             for line in gzip.open(path, "rt")]
    assert texts == ["The river rose at dawn.\n" + footer, "Bread was baked twice.\n", "Snow fell on the hills.\n"]
    dedup = report["stages"][-1]
    assert dedup["stage"] == "dedup" and dedup["in"] == 4 and dedup["out"] == 3
    assert dedup["counts"]["duplicate_units"] == 4 and dedup["counts"]["emptied_by_units"] == 1
    with pytest.raises(ConfigError, match="units"):
        recipe_from_dict({"sources": [{"path": str(corpus)}], "stages": [{"dedup": {"units": "paragraph"}}]})
