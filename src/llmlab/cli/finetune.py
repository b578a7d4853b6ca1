"""`llmlab finetune RECIPE.yaml --out DIR [--resume] [section.field=value ...]`: fine-tune a checkpoint from a recipe
(SFT, reward, DPO, PPO or GRPO, fully or with LoRA); `llmlab finetune-data synthetic OUT.jsonl --n N`: write synthetic
instruction tasks for an offline demonstration; `llmlab finetune-data preference OUT.jsonl --model DIR --n N`:
preference pairs of them against a model's own wrong answers."""

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
                                 description="Write synthetic instruction tasks with exact answers (Alpaca JSONL) "
                                             "or preference pairs of them (JSONL).")
    kinds = data.add_subparsers(dest="kind", metavar="KIND", required=True)
    synthetic = kinds.add_parser("synthetic", help="arithmetic, reversing, sorting, counting, copying, case, lookups",
                                 description="Write synthetic instruction tasks as Alpaca JSONL.")
    synthetic.add_argument("out", metavar="OUT.jsonl", help="the file to write")
    synthetic.add_argument("--n", type=int, default=2000, help="how many tasks (default 2000)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synthetic.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    synthetic.add_argument("--exclude", action="append", default=[], metavar="FILE",
                           help="leave out prompts (instruction and input) that this task file holds; repeatable")
    synthetic.add_argument("--overwrite", action="store_true", help="replace OUT.jsonl if it exists")
    synthetic.set_defaults(handler=run_synthetic)
    preference = kinds.add_parser(
        "preference", help="preference pairs of synthetic tasks: the gold answer over a model's wrong one",
        description="Write preference pairs (prompt, chosen, rejected) of synthetic tasks as JSONL: chosen is the gold "
                    "answer, rejected the model's own greedy answer where it is wrong, else a corrupted gold answer "
                    "(each line's rejected_from says which).")
    preference.add_argument("out", metavar="OUT.jsonl", help="the file to write")
    preference.add_argument("--model", required=True, metavar="DIR", help="the model whose answers are rejected "
                                                                          "(e.g. an SFT run's final/)")
    preference.add_argument("--n", type=int, default=1000, help="how many pairs (default 1000)")
    preference.add_argument("--seed", type=int, default=0, help="random seed of the tasks (default 0)")
    preference.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    preference.add_argument("--max-new-tokens", type=int, default=32, help="the longest answer generated (default 32)")
    preference.add_argument("--device", default="cpu", help="where the model runs (default cpu)")
    preference.add_argument("--exclude", action="append", default=[], metavar="FILE",
                            help="leave out prompts (instruction and input) that this task file holds; repeatable")
    preference.add_argument("--overwrite", action="store_true", help="replace OUT.jsonl if it exists")
    preference.set_defaults(handler=run_preference)


def run_finetune(arguments: argparse.Namespace) -> None:
    """Load the recipe, fine-tune (in every process torchrun started, if it did), and say where the model went."""
    from llmlab.adapt.finetune import finetune, load_recipe

    recipe = load_recipe(arguments.recipe, arguments.overrides)
    run_in_every_process(lambda: finetune(recipe, arguments.out, resume=arguments.resume,
                                          progress=not arguments.no_progress))


def run_synthetic(arguments: argparse.Namespace) -> None:
    """Write the synthetic tasks and say how many."""
    from llmlab.adapt.synthetic import write_tasks

    path = write_tasks(arguments.out, arguments.n, arguments.seed, _task_names(arguments),
                       overwrite=arguments.overwrite, exclude=arguments.exclude)
    print(f"wrote {arguments.n} tasks to {path}")


def run_preference(arguments: argparse.Namespace) -> None:
    """Write the preference pairs and say where their rejected answers came from."""
    from llmlab.adapt.synthetic import write_preferences

    path, sources = write_preferences(arguments.out, arguments.model, arguments.n, arguments.seed,
                                      _task_names(arguments), arguments.max_new_tokens, arguments.overwrite,
                                      arguments.device, arguments.exclude)
    print(f"wrote {arguments.n} preference pairs to {path}: rejected is the model's wrong answer in "
          f"{sources['model']}, a corrupted gold answer in {sources['corrupted']}")


def _task_names(arguments: argparse.Namespace) -> list[str] | None:
    return [name.strip() for name in arguments.tasks.split(",")] if arguments.tasks else None
