"""IsoFLOP sweeps (Hoffmann et al. 2022, §3.2): for each compute budget C and model size N, an ordinary pretraining
run of D = C/(6N) tokens in a resumable run directory, then the Chinchilla fit (approaches 1–3) and its figure."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from llmlab.errors import ConfigError
from llmlab.scaling.fit import FLOPS_PER_PARAMETER_TOKEN, MIN_POINTS, Points, fit, read_run, write_fit
from llmlab.train.recipe import Recipe

# name → (d_model, n_layers, n_heads): width and depth grown together, heads about 16 wide, each size 1.4–1.9× the
# parameters of the one before (LLaMA blocks, a 512-token vocabulary and tied embeddings: 12k … 4.9M parameters)
SIZES = {
    "16x1": (16, 1, 1), "24x1": (24, 1, 1), "32x1": (32, 1, 2), "32x2": (32, 2, 2), "40x2": (40, 2, 2),
    "48x2": (48, 2, 3), "64x2": (64, 2, 4), "64x3": (64, 3, 4), "80x3": (80, 3, 5), "96x3": (96, 3, 6),
    "96x4": (96, 4, 6), "128x4": (128, 4, 8), "160x4": (160, 4, 10), "192x5": (192, 5, 12), "256x6": (256, 6, 16),
}
# Without --sizes, each budget trains the sizes whose D/N lies a decade either side of Chinchilla's 20 tokens per
# parameter (Hoffmann et al. 2022, Table 3), so that an IsoFLOP minimum anywhere near it falls inside the grid.
TOKENS_PER_PARAMETER = (2.0, 200.0)
MIN_STEPS = 10  # fewer optimiser steps than this are no training run
CHECKPOINTS_PER_RUN = 4
PLAN_FILE, POINTS_FILE, FIT_FILE, PLOT_FILE = "sweep.json", "points.csv", "fit.json", "fit.png"
RUNS_DIRECTORY, DATA_DIRECTORY = "runs", "data"
KAPLAN_EXPONENT, CHINCHILLA_EXPONENT = 0.73, 0.50  # N_opt ∝ C^a: Kaplan et al. 2020 eq. 1.7; Hoffmann et al. 2022


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One run of the sweep: a compute budget, a model size, a seed, its parameters and its steps."""

    budget: float
    size: str
    seed: int
    params: int
    steps: int
    tokens_per_step: int

    @property
    def name(self) -> str:
        """The run directory's name, e.g. C1e+11-32x2-s0."""
        return f"C{self.budget:.3g}-{self.size}-s{self.seed}"

    @property
    def tokens(self) -> int:
        """The tokens the run trains on: steps × batch × sequence length."""
        return self.steps * self.tokens_per_step


def _items(text: str, option: str) -> list[str]:
    """The comma-separated items of an option, or a ConfigError naming it."""
    items = [item.strip() for item in str(text).split(",")]
    if any(not item for item in items):
        raise ConfigError(f"{option} is {text!r}; give a comma-separated list without empty items.")
    return items


def parse_budgets(text: str) -> list[float]:
    """--budgets: comma-separated positive FLOP counts such as 1e11,3e11."""
    try:
        budgets = [float(item) for item in _items(text, "--budgets")]
    except ValueError:
        budgets = []
    if not budgets or not all(math.isfinite(budget) and budget > 0 for budget in budgets):
        raise ConfigError(f"--budgets is {text!r}; give comma-separated positive FLOP counts such as 1e11,3e11.")
    return budgets


def parse_seeds(text: str) -> list[int]:
    """--seeds: comma-separated non-negative whole numbers such as 0,1,2."""
    items = _items(text, "--seeds")
    if not all(item.isdigit() for item in items):
        raise ConfigError(f"--seeds is {text!r}; give comma-separated non-negative whole numbers such as 0,1,2.")
    return [int(item) for item in items]


def parse_sizes(text: str) -> list[str]:
    """--sizes: comma-separated names of SIZES such as 32x2,48x2."""
    sizes = _items(text, "--sizes")
    for size in sizes:
        size_fields(size, gated=False)
    return sizes


def size_fields(size: str, gated: bool) -> dict:
    """The ModelConfig fields of a named size (d_ff 4·d, or 8·d/3 rounded up to a multiple of 8 for gated MLPs)."""
    if size not in SIZES:
        raise ConfigError(f"--sizes names {size!r}, which is no size of the sweep; choose from {', '.join(SIZES)}.")
    d_model, n_layers, n_heads = SIZES[size]
    d_ff = -(-8 * d_model // 3 // 8) * 8 if gated else 4 * d_model
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": None, "d_ff": d_ff}


def sized_recipe(recipe: Recipe, size: str) -> Recipe:
    """The recipe with its model at a named size."""
    return dataclasses.replace(recipe, model={**recipe.model, **size_fields(size, recipe.model_config().is_gated)})


def parameter_count(recipe: Recipe, **fields) -> int:
    """The recipe's model's parameters (tied weights once), counted on the meta device."""
    from llmlab.model.transformer import Model

    with torch.device("meta"):
        return Model(recipe.model_config(**fields)).num_parameters()


def plan(recipe: Recipe, budgets: Iterable[float], sizes: Iterable[str] | None = None, seeds: Iterable[int] = (0,),
         vocab_size: int | None = None) -> list[GridPoint]:
    """The IsoFLOP grid: for each budget C and size N, D = C/(6N) tokens in round(D / (batch × seq_len)) steps.

    Without sizes, each budget takes the SIZES whose D/N lies within TOKENS_PER_PARAMETER; a size is left out of a
    budget where it would train fewer than MIN_STEPS steps. vocab_size defaults to the recipe's data.vocab_size."""
    budgets, seeds = list(budgets), list(seeds)
    fields = {"vocab_size": vocab_size or recipe.data.vocab_size}
    chosen = list(SIZES) if sizes is None else list(sizes)
    counts = {size: parameter_count(sized_recipe(recipe, size), **fields) for size in chosen}
    tokens_per_step = recipe.data.batch_size * recipe.data.seq_len * recipe.train.grad_accum
    grid = []
    for budget in sorted(set(budgets)):
        row, (low, high) = [], TOKENS_PER_PARAMETER
        for size, params in sorted(counts.items(), key=lambda item: item[1]):
            tokens = budget / (FLOPS_PER_PARAMETER_TOKEN * params)
            steps = round(tokens / tokens_per_step)
            if steps >= MIN_STEPS and (sizes is not None or low <= tokens / params <= high):
                row += [GridPoint(budget, size, seed, params, steps, tokens_per_step) for seed in seeds]
        if not row:
            smallest = min(counts, key=counts.get)
            window = "" if sizes is not None else f" within {low:g}–{high:g} tokens per parameter"
            raise ConfigError(
                f"--budgets: {budget:.3g} FLOPs leaves no size a run of at least {MIN_STEPS} steps of "
                f"{tokens_per_step} tokens{window} (the smallest size, {smallest}, would train "
                f"{budget / (FLOPS_PER_PARAMETER_TOKEN * counts[smallest]) / tokens_per_step:.1f} steps).")
        grid += row
    return grid


def check_fittable(grid: list[GridPoint]) -> None:
    """Refuse a grid too small for the Chinchilla fit, before anything is trained."""
    sizes = len({point.size for point in grid})
    if len(grid) < MIN_POINTS["chinchilla"] or sizes < 2:
        raise ConfigError(f"--budgets and --sizes give {len(grid)} runs of {sizes} sizes; the Chinchilla fit needs "
                          f"at least {MIN_POINTS['chinchilla']} runs of two or more sizes.")


def run_recipe(recipe: Recipe, point: GridPoint, data_source: str) -> Recipe:
    """The recipe of one grid point: its size, seed and steps, the sweep's data, one held-out eval at the end, and
    CHECKPOINTS_PER_RUN checkpoints to resume from."""
    sized = sized_recipe(recipe, point.size)
    train = dataclasses.replace(recipe.train, steps=point.steps, seed=point.seed, eval_every=point.steps,
                                warmup=min(recipe.train.warmup, point.steps // 10), sample_every=0,
                                checkpoint_every=max(1, math.ceil(point.steps / CHECKPOINTS_PER_RUN)), keep_last=1)
    return dataclasses.replace(sized, data=dataclasses.replace(recipe.data, source=data_source, sources=()),
                               train=train)


def _recipe_json(recipe: Recipe) -> dict:
    """The recipe as plain JSON values (tuples as lists), to compare with the one a sweep directory was made with."""
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def _points_csv(grid: list[GridPoint], rows: list[dict]) -> str:
    """The sweep's rows as CSV: params, tokens, flops (the budget), loss, and the run's size, seed, steps and name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["params", "tokens", "flops", "loss", "size", "seed", "steps", "run"])
    for point, row in zip(grid, rows):
        writer.writerow([row["params"], point.tokens, f"{point.budget:.6g}", f"{row['loss']:.6f}", point.size,
                         point.seed, point.steps, f"{RUNS_DIRECTORY}/{point.name}"])
    return buffer.getvalue()


def sweep(recipe: Recipe, budgets: Iterable[float], out: str | os.PathLike, sizes: Iterable[str] | None = None,
          seeds: Iterable[int] | None = None, progress: bool = True, starts: int | None = 100) -> dict:
    """Train the IsoFLOP grid of the recipe into out/runs (skipping finished runs, resuming unfinished ones from their
    newest checkpoint), then fit Chinchilla's law to the final held-out losses and write out/points.csv,
    out/fit.json and out/fit.png; returns the fit (L-BFGS from the `starts` best grid starts, as llmlab scaling fit)."""
    from tqdm.auto import tqdm

    from llmlab.scaling.plots import plot_fit
    from llmlab.train.runs import check_out_directory, is_finished, shared_data, train_unless_finished, write_text

    out, budgets = Path(out), list(budgets)
    seeds = list(seeds) if seeds is not None else [recipe.train.seed]
    sizes = list(sizes) if sizes is not None else None
    check_fittable(plan(recipe, budgets, sizes, seeds))  # bad input is refused before anything is written
    check_out_directory(out, PLAN_FILE, "recipe", _recipe_json(recipe))
    source, vocab_size = shared_data(recipe, out / DATA_DIRECTORY, progress)
    grid = plan(recipe, budgets, sizes, seeds, vocab_size)
    description = [{**dataclasses.asdict(point), "name": point.name, "tokens": point.tokens} for point in grid]
    write_text(out / PLAN_FILE, json.dumps({"recipe": _recipe_json(recipe), "vocab_size": vocab_size,
                                             "runs": description}, indent=2) + "\n")
    flops = [FLOPS_PER_PARAMETER_TOKEN * point.params * point.tokens for point in grid]
    runs = [out / RUNS_DIRECTORY / point.name for point in grid]
    finished = [is_finished(run) for run in runs]
    bar = tqdm(total=sum(flops), initial=sum(f for f, done in zip(flops, finished) if done), unit="FLOP",
               unit_scale=True, desc="sweep", disable=not progress)
    with bar:
        for point, run, run_flops, done in zip(grid, runs, flops, finished):
            if done:
                continue
            start = bar.n
            bar.set_postfix_str(f"{point.name} ({point.steps} steps)")

            def advance(step: int, loss: float, start=start, per_step=run_flops / point.steps) -> None:
                bar.update(start + (step + 1) * per_step - bar.n)

            train_unless_finished(run_recipe(recipe, point, source), run, on_step=advance)
    rows = [read_run(run) for run in runs]
    points = Points(np.array([row["params"] for row in rows], dtype=float),
                    np.array([point.tokens for point in grid], dtype=float),
                    np.array([row["loss"] for row in rows], dtype=float),
                    np.array([point.budget for point in grid], dtype=float))  # the IsoFLOP budget groups the runs
    write_text(out / POINTS_FILE, _points_csv(grid, rows))
    result = fit(points, "chinchilla", top=starts)
    write_fit(result, out / FIT_FILE, overwrite=True)
    plot_fit(points, result, out / PLOT_FILE, overwrite=True)
    return result
