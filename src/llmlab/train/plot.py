"""Training curves: the loss, held-out loss, learning rate and throughput of one or several runs, on shared axes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmlab.data.shards import atomic_path
from llmlab.errors import ConfigError, DataError
from llmlab.train.loop import METRICS_FILE

# metrics.jsonl key → panel title, in reading order of the 2 × 2 grid
PANELS = {"loss": "training loss", "eval_loss": "held-out loss", "lr": "learning rate", "tokens_per_s": "tokens/s"}
FIGURE_INCHES, DPI = (10, 7), 100


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, skipping a last line that a killed run cut short."""
    file = Path(run_dir) / METRICS_FILE
    if not file.is_file():
        raise DataError(f"{file} does not exist; pass run directories that llmlab pretrain (or a Trainer) wrote.")
    records = []
    for line in file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    if not records:
        raise DataError(f"{file} holds no metrics yet.")
    return records


def run_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """Each run's directory name, or the whole path given where two runs share a name."""
    names = [Path(run_dir).resolve().name for run_dir in run_dirs]
    return [name if names.count(name) == 1 else str(run_dir) for name, run_dir in zip(names, run_dirs)]


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None, overwrite: bool = False):
    """Draw each run's curves (one colour per run) on a 2 × 2 grid; write it to out (PNG) atomically; return it."""
    try:
        from matplotlib.figure import Figure  # drawn without pyplot, so on the Agg canvas and no global state
    except ImportError:
        raise ConfigError("plotting needs the matplotlib package (pip install 'llmlab[plot]').") from None
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another output or pass --overwrite (overwrite=True).")
    runs = [read_metrics(run_dir) for run_dir in run_dirs]
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).flatten()
    for index, (records, label) in enumerate(zip(runs, run_labels(run_dirs))):
        for panel, key in zip(axes, PANELS):
            points = [(record["step"], record[key]) for record in records if record.get(key) is not None]
            if points:
                steps, values = zip(*points)
                marker = "o" if key == "eval_loss" else None  # evaluations are few: a lone one still shows
                panel.plot(steps, values, color=f"C{index % 10}", label=label, marker=marker, markersize=3)
    for panel, (key, title) in zip(axes, PANELS.items()):
        panel.set_title(title)
        panel.grid(alpha=0.3)
        if not panel.lines:
            panel.text(0.5, 0.5, f"no {key} in {METRICS_FILE}", ha="center", va="center", transform=panel.transAxes)
    for panel in axes[2:]:
        panel.set_xlabel("step")
    axes[0].legend()
    if out is not None:
        with atomic_path(Path(out)) as staging:
            figure.savefig(staging, format=Path(out).suffix.lstrip(".") or "png")
    return figure
