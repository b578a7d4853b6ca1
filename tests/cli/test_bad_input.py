"""Bad input on the command line: one sentence on stderr, exit code 2, no traceback, and nothing of the user's lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_run import run_cli

TINY = str(Path(__file__).parents[2] / "recipes" / "tiny.yaml")


def run(arguments: list[str], capsys) -> tuple[int, str]:
    """main's exit code (argparse's too) and what it wrote to stderr."""
    code, _, error = run_cli(arguments, capsys)
    return code, error


def one_error(code: int, error: str, *named: str) -> None:
    assert code == 2 and "Traceback" not in error
    last = error.splitlines()[-1]
    assert "error: " in last and all(name in last for name in named), error


def test_a_data_stage_whose_output_is_a_directory(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "some_dir").mkdir()
    code, error = run(["data", "filter", str(tmp_path / "in.jsonl"), str(tmp_path / "some_dir") + "/"], capsys)
    one_error(code, error, "some_dir", "is a directory")
    assert error.count("\n") == 1 and list((tmp_path / "some_dir").iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl", "some_dir"]


@pytest.mark.parametrize("command", [
    ["data", "run", "RECIPE", "--out", "FILE", "--no-progress"],
    ["data", "dedup", "IN", "OUT", "--index", "FILE"],
    ["data", "train-tokenizer", "IN", "--out", "FILE", "--vocab-size", "300", "--no-progress"],
])
def test_a_file_where_a_directory_is_written(tmp_path, capsys, command):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"line {i} of text"}) + "\n" for i in range(30)))
    (tmp_path / "recipe.yaml").write_text(f"sources: [{{path: {tmp_path / 'in.jsonl'}}}]\n")
    (tmp_path / "file").write_text("mine")
    names = {"RECIPE": "recipe.yaml", "IN": "in.jsonl", "OUT": "out.jsonl", "FILE": "file"}
    code, error = run([str(tmp_path / names[word]) if word in names else word for word in command], capsys)
    one_error(code, error, "file", "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "in.jsonl", "recipe.yaml"]


@pytest.mark.parametrize("command", [["pretrain", "RECIPE", "--out", "run", "--no-progress"], ["data", "run", "RECIPE"]])
@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_recipe_is_refused(tmp_path, capsys, monkeypatch, command, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text(text)
    code, error = run([word.replace("RECIPE", "empty.yaml") for word in command], capsys)
    one_error(code, error, "empty.yaml", "is empty")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.yaml"]


@pytest.mark.parametrize("override", ["train.stpes=3", "data.sequence_length=3", "model.widht=3",
                                      "train.steps=many", "objective.prefix_length=3"])
def test_a_bad_override_is_named_not_the_recipe(tmp_path, capsys, override):
    code, error = run(["pretrain", TINY, "--out", str(tmp_path / "run"), override], capsys)
    one_error(code, error, f"the override {override!r}")
    assert "tiny.yaml" not in error and not (tmp_path / "run").exists()


def test_an_unknown_flag_after_a_subcommand_prints_its_usage(capsys):
    code, error = run(["convert", "a", "b", "--bogus"], capsys)
    assert code == 2 and error.startswith("usage: llmlab convert ")
    assert error.splitlines()[-1] == "llmlab convert: error: unrecognized arguments: --bogus"
    code, error = run(["data", "filter", "a", "b", "--bogus"], capsys)
    assert code == 2 and error.startswith("usage: llmlab data filter ") and "--bogus" in error
    code, error = run(["pretrain", TINY, "--out", "x", "train.steps=3", "--bogus"], capsys)
    assert code == 2 and error.startswith("usage: llmlab pretrain ") and error.endswith("arguments: --bogus\n")


def test_without_a_traceback_in_a_real_process(tmp_path):
    (tmp_path / "afile").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "llmlab", "pretrain", TINY, "--out", str(tmp_path / "afile")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "afile" in result.stderr


def test_train_tokenizer_keeps_an_existing_tokenizer_unless_overwrite(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"line {i} of text"}) + "\n" for i in range(30)))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("mine")
    command = ["data", "train-tokenizer", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "tok"),
               "--vocab-size", "300", "--no-progress"]
    code, error = run(command, capsys)
    one_error(code, error, "tokenizer.json", "--overwrite")
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == "mine"
    assert run([*command, "--overwrite"], capsys)[0] == 0
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["type"] == "BPE"
