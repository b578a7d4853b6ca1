import subprocess
import sys

import pytest

import llmlab.demo
from llmlab.cli.main import main
from llmlab.errors import ConfigError


def test_user_error_prints_one_line_and_exits_2(monkeypatch, capsys):
    def failing_run(**options):
        raise ConfigError("d_model 100 is not divisible by n_heads 3.")

    monkeypatch.setattr(llmlab.demo, "run", failing_run)
    assert main(["demo"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: d_model 100 is not divisible by n_heads 3.\n"
    assert captured.out == ""


def test_a_bug_still_raises(monkeypatch):
    def broken_run(**options):
        raise RuntimeError("bug")

    monkeypatch.setattr(llmlab.demo, "run", broken_run)
    with pytest.raises(RuntimeError, match="bug"):
        main(["demo"])


def test_demo_options_reach_the_demo(monkeypatch):
    received = {}
    monkeypatch.setattr(llmlab.demo, "run", lambda **options: received.update(options))
    assert main(["demo", "--steps", "3", "--out", "somewhere", "--seed", "7"]) == 0
    assert received == {"steps": 3, "out_dir": "somewhere", "seed": 7, "overwrite": False}


def test_convert_of_a_missing_directory_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llmlab", "convert", str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "demo" in output and "convert" in output


def test_unknown_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
