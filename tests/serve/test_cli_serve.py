"""`llmlab serve`'s command line: its options, and one-sentence errors (exit 2) before anything is served."""

import pytest

from tests.cli_run import run_cli

pytest.importorskip("fastapi")


def test_serve_lists_its_options(capsys):
    code, out, _ = run_cli(["serve", "--help"], capsys)
    assert code == 0
    for option in ("--host", "--port", "--api-key", "--served-model-name", "--max-num-seqs", "--max-model-len",
                   "--kv-cache-tokens", "LLMLAB_API_KEY"):
        assert option in out


@pytest.mark.parametrize("arguments, words", [
    (["serve", "/no/such/model"], ["/no/such/model", "not a directory"]),
    (["serve", "/no/such/model", "--port", "70000"], ["--port", "70000"]),
])
def test_serve_refuses_bad_input_in_one_line(capsys, arguments, words):
    code, out, err = run_cli(arguments, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err
