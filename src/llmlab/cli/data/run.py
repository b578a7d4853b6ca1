"""`llmlab data run RECIPE.yaml [--out DIR] [--workers N] [--executor local|ray] [--address ADDR]`: run a whole data
pipeline recipe (resumable), on this machine or on a Ray cluster."""

from __future__ import annotations

import argparse

from llmlab.cli.data._common import warn_truncated


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the run command."""
    parser = subparsers.add_parser(
        "run", help="run a YAML data pipeline recipe: sources, stages, dedup, tokenizer, shards, report",
        description="Run a data pipeline recipe (see recipes/data/). Running it again into the same output "
                    "finishes a killed run: only the unfinished units are redone.")
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the pipeline recipe")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: the recipe's output)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes, or with ray tasks at once (default: the recipe's workers)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where the tasks run: worker processes here (default), or a Ray cluster")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --executor ray: the cluster to join (ray start --head prints it; default: start a "
                             "local Ray instance of --workers CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_recipe)


def run_recipe(arguments: argparse.Namespace) -> None:
    """Load the recipe, run it, and print the report's Markdown summary."""
    from llmlab.data.pipeline import run_pipeline
    from llmlab.data.pipeline_recipe import load_pipeline_recipe
    from llmlab.data.pipeline_report import report_markdown

    recipe = load_pipeline_recipe(arguments.recipe, {"workers": arguments.workers, "output": arguments.out})
    report = run_pipeline(recipe, progress=not arguments.no_progress, executor=arguments.executor,
                          address=arguments.address)
    print(report_markdown(report))
    warn_truncated(report["stages"][0]["counts"])
    print(f"wrote {recipe.output}")
