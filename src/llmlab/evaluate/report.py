"""What an evaluation leaves in its output directory: results.json (metrics with standard errors, the exact
configuration, model and data hashes), samples.jsonl (every prompt, output, extracted answer and score), report.md
(a table) and, where they apply, plots: accuracy against shots, pass@k against k. Every file is written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from llmlab.data.shards import atomic_path

RESULTS_FILE, SAMPLES_FILE, REPORT_FILE = "results.json", "samples.jsonl", "report.md"
SHOTS_PLOT, PASS_AT_K_PLOT = "accuracy_vs_shots.png", "pass_at_k.png"
ACCURACY_METRICS = ("acc", "acc_norm", "exact_match,flexible-extract", "exact_match,strict-match", "exact_match",
                    "f1", "pass@1")


def write_outputs(out: str | os.PathLike, evaluation: dict, extra: dict | None = None) -> list[Path]:
    """Write results.json, samples.jsonl, report.md and the plots that apply into out; the paths written."""
    out = Path(out)
    results = {**(extra or {}), **{key: value for key, value in evaluation.items() if key != "samples"}}
    written = [out / RESULTS_FILE, out / SAMPLES_FILE, out / REPORT_FILE]
    with atomic_path(written[0]) as staging:
        staging.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with atomic_path(written[1]) as staging, open(staging, "w", encoding="utf-8") as handle:
        for label, records in evaluation["samples"].items():
            for record in records:
                handle.write(json.dumps({"task": label, **record}, ensure_ascii=False) + "\n")
    with atomic_path(written[2]) as staging:
        staging.write_text(markdown_table(evaluation["results"]), encoding="utf-8")
    written += plot_results(out, evaluation["results"])
    return written


def _number(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown_table(results: dict) -> str:
    """A Markdown table: one row per task and metric, with the value, its standard error and the items."""
    lines = ["| task | shots | metric | value | ± stderr | n |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for label, result in results.items():
        for name, metric in result["metrics"].items():
            lines.append(f"| {result['task']} | {result['num_fewshot']} | {name} | {_number(metric['value'])} | "
                         f"{_number(metric['stderr'])} | {metric['n']} |")
    return "\n".join(lines) + "\n"


def _accuracy_metric(metrics: dict) -> str | None:
    return next((name for name in ACCURACY_METRICS if name in metrics), None)


def plot_results(out: Path, results: dict) -> list[Path]:
    """Accuracy against shots (a task run at several shot counts) and pass@k against k (tasks with pass@k for
    more than one k); nothing without matplotlib."""
    try:
        from matplotlib.figure import Figure  # without pyplot: the Agg canvas, no global state
    except ImportError:
        return []
    written = []
    by_task: dict[str, list] = {}
    for result in results.values():
        name = _accuracy_metric(result["metrics"])
        if name is not None:
            by_task.setdefault(result["task"], []).append((result["num_fewshot"], result["metrics"][name], name))
    shots = {task: sorted(points, key=lambda p: p[0]) for task, points in by_task.items() if len(points) > 1}
    if shots:
        figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
        axes = figure.subplots()
        for task, points in shots.items():
            axes.errorbar([p[0] for p in points], [p[1]["value"] for p in points],
                          yerr=[p[1]["stderr"] or 0 for p in points], marker="o", capsize=3,
                          label=f"{task} ({points[0][2]})")
        axes.set(xlabel="demonstrations (shots)", ylabel="accuracy", title="Accuracy against shots")
        axes.grid(alpha=0.3)
        axes.legend()
        written.append(_save(figure, out / SHOTS_PLOT))
    curves = {label: sorted((int(name[5:]), metric) for name, metric in result["metrics"].items()
                            if name.startswith("pass@"))
              for label, result in results.items()}
    curves = {label: points for label, points in curves.items() if len(points) > 1}
    if curves:
        figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
        axes = figure.subplots()
        for label, points in curves.items():
            axes.errorbar([k for k, _ in points], [m["value"] for _, m in points],
                          yerr=[m["stderr"] or 0 for _, m in points], marker="o", capsize=3, label=label)
        axes.set(xlabel="k (samples)", ylabel="pass@k", title="pass@k against k", xscale="log")
        axes.grid(alpha=0.3)
        axes.legend()
        written.append(_save(figure, out / PASS_AT_K_PLOT))
    return written


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as staging:
        figure.savefig(staging, format="png")
    return path
