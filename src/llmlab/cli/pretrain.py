"""`llmlab pretrain RECIPE.yaml --out DIR [--resume] [section.field=value ...]`: pretrain a model from a recipe, in one
process or in each of those `torchrun --nproc-per-node N -m llmlab pretrain ...` starts (docs/distributed.md)."""

from __future__ import annotations

import argparse


class _OverridesAnywhere(argparse.ArgumentParser):
    """Collects `key=value` arguments wherever they stand (argparse alone rejects positionals after options)."""

    def parse_known_args(self, args=None, namespace=None):
        """Parse as usual, then move the leftover key=value arguments into overrides."""
        namespace, extras = super().parse_known_args(args, namespace)
        overrides = [arg for arg in extras if "=" in arg and not arg.startswith("-")]
        namespace.overrides = [*(namespace.overrides or []), *overrides]
        return namespace, [arg for arg in extras if arg not in overrides]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the pretrain subcommand."""
    parser = subparsers.add_parser("pretrain", help="pretrain a model from a YAML recipe",
                                   description="Pretrain a model from a YAML recipe; override any field as "
                                               "section.field=value (e.g. train.steps=100 model.n_layers=2).")
    parser.__class__ = _OverridesAnywhere  # subparsers build plain ArgumentParsers; this one also takes overrides
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe (see recipes/)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run directory: checkpoints/, metrics.jsonl, final/")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="recipe fields to override")
    parser.set_defaults(handler=run_pretrain)


def run_pretrain(arguments: argparse.Namespace) -> None:
    """Load the recipe, train (in every process torchrun started, if it did), and say where the final model went."""
    from llmlab.train.pretrain import pretrain
    from llmlab.train.recipe import load_recipe

    recipe = load_recipe(arguments.recipe, arguments.overrides)
    run_in_every_process(lambda: pretrain(recipe, arguments.out, resume=arguments.resume,
                                          progress=not arguments.no_progress))


def run_in_every_process(train) -> None:
    """Run train() (returning the final model's directory) in every process torchrun started, or in this one, and
    say where the model went."""
    from llmlab.train import distributed

    distributed.setup()
    try:
        final = train()
        is_main = distributed.is_main()
    finally:
        distributed.teardown()
    if is_main:
        print(f"wrote {final}")
