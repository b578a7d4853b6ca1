"""`llmlab experiment EXPERIMENT.yaml --out DIR`: a recipe's variants × seeds trained and compared."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the experiment subcommand."""
    parser = subparsers.add_parser("experiment", help="train a recipe's variants × seeds and compare them",
                                   description="Train every variant (a list of section.field=value overrides of "
                                               "the recipe) with every seed, each a resumable run directory under "
                                               "DIR/runs (a rerun skips finished runs and resumes the others), and "
                                               "write DIR/results.csv and DIR/results.png (see recipes/experiments/).")
    parser.add_argument("experiment", metavar="EXPERIMENT.yaml", help="recipe, variants and seeds")
    parser.add_argument("--out", required=True, metavar="DIR", help="the experiment directory (new, or one to resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> None:
    """Train and compare the variants, and print each one's final held-out loss over the seeds."""
    from llmlab.train.experiment import PLOT_FILE, PROBE_COLUMNS, RESULTS_FILE, load_experiment, run_experiment

    experiment = load_experiment(arguments.experiment)
    rows = run_experiment(experiment, arguments.out, progress=not arguments.no_progress)
    print(f"{'variant':<16} {'held-out loss (mean)':>20}  per seed{'':<24} diverged")
    for name in experiment.variants:
        mine = [row for row in rows if row["variant"] == name]
        losses = [row["eval_loss"] for row in mine]
        print(f"{name:<16} {sum(losses) / len(losses):>20.4f}  {' '.join(f'{loss:.4f}' for loss in losses):<32} "
              f"{sum(row['diverged'] for row in mine)}/{len(mine)}")
    if experiment.eval_lengths:
        print(f"{'variant':<16} " + " ".join(f"{f'loss@{length}':>10}" for length in experiment.eval_lengths)
              + "  (mean over seeds)")
        for name in experiment.variants:
            mine = [row for row in rows if row["variant"] == name]
            print(f"{name:<16} " + " ".join(f"{sum(row[f'loss_at_{length}'] for row in mine) / len(mine):>10.4f}"
                                            for length in experiment.eval_lengths))
    columns = [column for probe in experiment.probes for column in PROBE_COLUMNS[probe]]
    if columns:
        print(f"{'variant':<16} " + " ".join(f"{column:>17}" for column in columns) + "  (mean over seeds)")
        for name in experiment.variants:
            mine = [row for row in rows if row["variant"] == name]
            print(f"{name:<16} " + " ".join(f"{sum(row[column] for row in mine) / len(mine):>17.4f}"
                                            for column in columns))
    for name in (RESULTS_FILE, PLOT_FILE):
        print(f"wrote {arguments.out}/{name}")
