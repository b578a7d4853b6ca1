"""Entry point of the `llmlab` command: builds the parser from the subcommand modules and runs one."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import llmlab
import llmlab.cli
from llmlab.errors import LlmlabError

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


def subcommand_modules() -> list[str]:
    """Names of the modules in llmlab.cli that define a subcommand, in alphabetical order."""
    return sorted(info.name for info in pkgutil.iter_modules(llmlab.cli.__path__) if info.name != "main")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="llmlab", description="Build, train, convert and run large language models.")
    parser.add_argument("--version", action="version", version=f"llmlab {llmlab.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in subcommand_modules():
        importlib.import_module(f"llmlab.cli.{name}").register(subparsers)
    for command_parser in _command_parsers(parser):
        command_parser.set_defaults(command_parser=command_parser)  # the innermost one's default wins
    return parser


def _command_parsers(parser: argparse.ArgumentParser):
    """Every subcommand's parser below parser, nested ones (llmlab data filter) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command_parser in action.choices.values():
                yield command_parser
                yield from _command_parsers(command_parser)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; a user error prints `error: <message>` to stderr and returns exit code 2."""
    code = _run(argv)
    distributed = sys.modules.get("llmlab.train.distributed")  # imported only by commands that may join a group
    return code if distributed is None else distributed.end_process(code)


def _run(argv: list[str] | None) -> int:
    arguments, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, with its usage
        arguments.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return arguments.handler(arguments) or 0
    except LlmlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
