"""Figures of a scaling-law fit: IsoFLOP curves, the fitted loss surface over (N, D), and compute-optimal frontiers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llmlab.errors import ConfigError
from llmlab.scaling.fit import (CHINCHILLA_PUBLISHED, Points, chinchilla_optimal, compute_budgets, compute_optimal,
                                kaplan_allocation, predict)

DPI = 100


def _frontier(result: dict, flops: np.ndarray) -> np.ndarray:
    """The fit's compute-optimal N at each budget."""
    return np.array([compute_optimal(float(budget), result)["params"] for budget in flops])


def plot_fit(points: Points, result: dict, out: str | os.PathLike, overwrite: bool = False):
    """Draw the fit beside its data (IsoFLOP curves when rows carry flops, the loss surface's contours over N and D,
    the compute-optimal frontier beside Kaplan's and Chinchilla's published ones) into out (PNG), atomically."""
    try:
        from matplotlib.colors import LogNorm, Normalize
        from matplotlib.figure import Figure  # no pyplot: the Agg canvas and no global state
    except ImportError:
        raise ConfigError("plotting needs the matplotlib package (pip install 'llmlab[plot]').") from None
    from llmlab.data.shards import atomic_path

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --plot or pass --overwrite.")
    budgets = [group for group in compute_budgets(points) if len(np.unique(points.params[group])) >= 2]
    panels = 3 if budgets else 2
    figure = Figure(figsize=(5.2 * panels, 4.6), dpi=DPI, layout="constrained")
    axes = list(figure.subplots(1, panels))
    law = "Chinchilla L = E + A/N^α + B/D^β" if result["law"] == "chinchilla" else "Kaplan joint L(N, D)"
    figure.suptitle(f"{law} fitted to {len(points)} runs")
    if budgets:
        _isoflops(axes.pop(0), points, result, budgets, LogNorm)
    _surface(axes[0], points, result, Normalize)
    _frontiers(axes[1], points, result)
    with atomic_path(out) as staging:
        figure.savefig(staging, format=out.suffix.lstrip(".") or "png")
    return figure


def _isoflops(axis, points: Points, result: dict, budgets: list[np.ndarray], LogNorm) -> None:
    """Loss against N for each compute budget, the fitted law along C = const, and each budget's optimum."""
    flops = np.array([np.exp(np.log(points.flops[group]).mean()) for group in budgets])
    norm = LogNorm(flops.min(), flops.max() * 1.0001)
    from matplotlib import colormaps

    colours = colormaps["viridis"]
    for group, budget in zip(budgets, flops):
        order = group[np.argsort(points.params[group])]
        colour = colours(norm(budget) * 0.9)
        axis.plot(points.params[order], points.loss[order], "o", color=colour, markersize=4)
        sizes = np.geomspace(points.params[order].min(), points.params[order].max(), 100)
        axis.plot(sizes, predict(result, sizes, budget / 6 / sizes), "-", color=colour, linewidth=1,
                  label=f"C = {budget:.1e}")
        best = compute_optimal(float(budget), result)
        if sizes.min() <= best["params"] <= sizes.max():
            axis.plot(best["params"], best["loss"], "*", color=colour, markersize=10, markeredgecolor="black")
    axis.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP curves (★ the fit's optimum)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, which="both")


def _surface(axis, points: Points, result: dict, Normalize) -> None:
    """Contours of the fitted loss over (N, D), the runs coloured by their loss on the same scale, and the frontier."""
    n = np.geomspace(points.params.min() / 2, points.params.max() * 2, 200)
    d = np.geomspace(points.tokens.min() / 2, points.tokens.max() * 2, 200)
    grid_n, grid_d = np.meshgrid(n, d)
    surface = predict(result, grid_n, grid_d)
    levels = np.quantile(points.loss, np.linspace(0, 1, 12))
    levels = np.unique(np.round(np.concatenate([[surface.min()], levels, [surface.max()]]), 4))
    norm = Normalize(levels.min(), levels.max())
    filled = axis.contourf(grid_n, grid_d, surface, levels=levels, cmap="viridis", norm=norm, alpha=0.55)
    lines = axis.contour(grid_n, grid_d, surface, levels=levels[1:-1], colors="black", linewidths=0.5)
    axis.clabel(lines, fmt="%.2f", fontsize=6)
    axis.scatter(points.params, points.tokens, c=points.loss, cmap="viridis", norm=norm, edgecolors="black",
                 linewidths=0.6, s=28, zorder=3)
    flops = np.geomspace(6 * n.min() * d.min(), 6 * n.max() * d.max(), 200)
    frontier = _frontier(result, flops)
    axis.plot(frontier, flops / 6 / frontier, "r--", linewidth=1.2, label="compute-optimal N, D")
    axis.set(xscale="log", yscale="log", xlim=(n.min(), n.max()), ylim=(d.min(), d.max()), xlabel="parameters N",
             ylabel="tokens D", title="fitted loss surface (contours) and runs")
    axis.figure.colorbar(filled, ax=axis, label="loss")
    axis.legend(fontsize=7, loc="upper left")


def _frontiers(axis, points: Points, result: dict) -> None:
    """The fit's compute-optimal N against C, beside Chinchilla's published approach-3 and Kaplan's allocation,
    with approach 1 and 2's per-budget optima where the fit has them."""
    known = points.flops[np.isfinite(points.flops)]
    low = min(known.min(), (6 * points.params * points.tokens).min()) if known.size else \
        (6 * points.params * points.tokens).min()
    flops = np.geomspace(low / 10, max(low * 1e6, 1e25), 100)
    axis.plot(flops, _frontier(result, flops), "-", color="C0", linewidth=2, label="this fit")
    published = [chinchilla_optimal(float(budget), **CHINCHILLA_PUBLISHED)["params"] for budget in flops]
    axis.plot(flops, published, "--", color="C1", label="Chinchilla approach 3 (Hoffmann et al. 2022)")
    axis.plot(flops, [kaplan_allocation(float(budget))["params"] for budget in flops], ":", color="C2",
              label="Kaplan et al. 2020: N ∝ C^0.73")
    for key, marker, colour in (("approach1", "s", "C3"), ("approach2", "^", "C4")):
        if isinstance(result.get(key), dict):
            optima = result[key]["budgets"]
            axis.plot([o["flops"] for o in optima], [o["params"] for o in optima], marker, color=colour,
                      label=f"{key.replace('approach', 'approach ')}: N ∝ C^{result[key]['a']:.2f}")
    axis.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="compute-optimal parameters N",
             title="compute-optimal frontier")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, which="both")
