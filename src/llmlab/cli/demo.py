"""`llmlab demo`: train a small LLaMA-style model on the bundled corpus and show samples before and after."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the demo subcommand."""
    parser = subparsers.add_parser("demo", help="train a small model on the bundled corpus and print samples")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the demo's own)")
    parser.add_argument("--out", default=None, help="directory to save the model and tokenizer (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint already in --out (other files there stay)")
    parser.set_defaults(handler=run_demo)


def run_demo(arguments: argparse.Namespace) -> None:
    """Run llmlab.demo with the parsed options."""
    from llmlab import demo

    options = {"seed": arguments.seed, "overwrite": arguments.overwrite}
    if arguments.steps is not None:
        options["steps"] = arguments.steps
    if arguments.out is not None:
        options["out_dir"] = arguments.out
    demo.run(**options)
