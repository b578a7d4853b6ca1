"""`llmlab finetune RECIPE.yaml --out DIR [--resume] [section.field=value ...]`: fine-tune a checkpoint from a recipe
(SFT, reward, DPO, PPO or GRPO, fully or with LoRA); `llmlab finetune-data synthetic OUT.jsonl --n N`: write synthetic
instruction tasks for an offline demonstration."""

from __future__ import annotations

import argparse

from llmlab.cli.pretrain import _OverridesAnywhere, run_in_every_process


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the finetune and finetune-data subcommands."""
    parser = subparsers.add_parser("finetune", help="fine-tune a model from a YAML recipe",
                                   description="Fine-tune a checkpoint from a YAML recipe (model, data, method, "
                                               "adapter, train); override any field as section.field=value.")
    parser.__class__ = _OverridesAnywhere  # subparsers build plain ArgumentParsers; this one also takes overrides
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe (e.g. recipes/finetune-sft.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory: checkpoints/, metrics.jsonl, final/")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="recipe fields to override")
    parser.set_defaults(handler=run_finetune)

    data = subparsers.add_parser("finetune-data", help="write fine-tuning data for a demonstration",
                                 description="Write synthetic instruction tasks with exact answers as Alpaca JSONL.")
    kinds = data.add_subparsers(dest="kind", metavar="KIND", required=True)
    synthetic = kinds.add_parser("synthetic", help="arithmetic, reversing, sorting, counting, copying, case, lookups",
                                 description="Write synthetic instruction tasks as Alpaca JSONL.")
    synthetic.add_argument("out", metavar="OUT.jsonl", help="the file to write")
    synthetic.add_argument("--n", type=int, default=2000, help="how many tasks (default 2000)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synthetic.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    synthetic.add_argument("--overwrite", action="store_true", help="replace OUT.jsonl if it exists")
    synthetic.set_defaults(handler=run_synthetic)


def run_finetune(arguments: argparse.Namespace) -> None:
    """Load the recipe, fine-tune (in every process torchrun started, if it did), and say where the model went."""
    from llmlab.adapt.finetune import finetune, load_recipe

    recipe = load_recipe(arguments.recipe, arguments.overrides)
    run_in_every_process(lambda: finetune(recipe, arguments.out, resume=arguments.resume,
                                          progress=not arguments.no_progress))


def run_synthetic(arguments: argparse.Namespace) -> None:
    """Write the synthetic tasks and say how many."""
    from llmlab.adapt.synthetic import write_tasks

    tasks = [name.strip() for name in arguments.tasks.split(",")] if arguments.tasks else None
    path = write_tasks(arguments.out, arguments.n, arguments.seed, tasks, overwrite=arguments.overwrite)
    print(f"wrote {arguments.n} tasks to {path}")
