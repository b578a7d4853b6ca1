"""`llmlab plot RUN_DIR... [--out curves.png]`: the training curves of one or several runs, side by side."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the plot subcommand."""
    parser = subparsers.add_parser("plot", help="plot the loss, held-out loss, learning rate and tokens/s of runs",
                                   description="Plot the training curves of one or several runs (their "
                                               "metrics.jsonl) on shared axes, one colour per run.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", default="curves.png", help="the image to write (default: curves.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=run_plot)


def run_plot(arguments: argparse.Namespace) -> None:
    """Plot the runs into --out and say where it went."""
    from llmlab.train.plot import plot_runs

    plot_runs(arguments.run_dirs, arguments.out, overwrite=arguments.overwrite)
    print(f"wrote {arguments.out}")
