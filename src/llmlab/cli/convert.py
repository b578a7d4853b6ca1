"""`llmlab convert IN OUT`: convert a checkpoint between the llmlab and Hugging Face formats."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the convert subcommand."""
    parser = subparsers.add_parser("convert", help="convert a checkpoint between the llmlab and Hugging Face formats")
    parser.add_argument("source", metavar="IN", help="an llmlab checkpoint directory or a Hugging Face model directory")
    parser.add_argument("destination", metavar="OUT", help="the directory to write")
    parser.add_argument("--to", choices=("hf", "llmlab"), default="hf", help="format of OUT (default: hf)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint files in an existing OUT (other files in it are kept)")
    parser.set_defaults(handler=run_convert)


def run_convert(arguments: argparse.Namespace) -> None:
    """Convert IN to OUT in the requested format and say where it went."""
    from llmlab.api import convert

    written = convert(arguments.source, arguments.destination, to=arguments.to, overwrite=arguments.overwrite)
    print(f"wrote {written} ({arguments.to} format)")
