"""Running the llmlab command line inside a test."""

from llmlab.cli.main import main


def run_cli(arguments: list[str], capsys) -> tuple[int, str, str]:
    """main's exit code (argparse's too), stdout and stderr; an unexpected exception fails the test."""
    try:
        code = main(arguments)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
