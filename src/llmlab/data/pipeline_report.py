"""The data pipeline's report: per-stage documents in and out and each stage's own counts (dropped by rule,
PII by kind, duplicates, bad input), tokens and seconds per phase, as report.json and report.md."""

from __future__ import annotations

import json
from collections import Counter

from llmlab.data.pipeline_recipe import PipelineRecipe, stage_name

# Counter keys that are the documents entering and leaving a stage rather than what the stage found
FLOW_KEYS = ("in", "out", "kept")


def _summed(dicts) -> dict:
    """The key-wise sum of count dicts, keys sorted."""
    total: Counter = Counter()
    for counts in dicts:
        total.update(counts)
    return dict(sorted(total.items()))


def build_report(recipe: PipelineRecipe, units: list, unit_stats: list[dict], dedup: dict | None,
                 finished: list[dict], seconds: dict, run: dict | None = None) -> dict:
    """The run's report from the units' stats files, the dedup counts and the finished units (shard entries); RUN:
    how it ran (executor, workers, tasks: per phase [tasks, of which this invocation ran]), which differs between
    executors and resumed runs while the rest does not."""
    from llmlab.data.pipeline import source_name

    read = _summed(stats["read"] for stats in unit_stats)
    stages = [{"stage": "read", "in": None, "out": read.get("documents", 0),
               "counts": {key: value for key, value in read.items() if key != "documents"}}]
    for position, stage in enumerate(recipe.document_stages):
        counts = _summed(stats["stages"][position] for stats in unit_stats)
        stages.append({"stage": stage_name(stage), "in": counts.get("in", 0), "out": counts.get("out", 0),
                       "counts": {key: value for key, value in counts.items() if key not in FLOW_KEYS}})
    if dedup is not None:
        emptied = _summed(stats["dedup"] for stats in unit_stats)
        stages.append({"stage": "dedup", "in": stages[-1]["out"], "out": dedup["out"],
                       "counts": {**emptied, **{k: v for k, v in dedup.items() if k not in FLOW_KEYS}}})
    documents = sum(unit["documents"] for unit in finished)
    tokens = None
    if recipe.tokenizer is not None:
        tokens = sum(unit["tokens"] for unit in finished)
        stages.append({"stage": "tokenize", "in": stages[-1]["out"], "out": documents,
                       "counts": {"tokens": tokens, "shards": sum(len(unit["shards"]) for unit in finished)}})
    sources = []
    for index in range(len(recipe.sources)):
        name = source_name(index, recipe)
        mine = [stats for unit, stats in zip(units, unit_stats) if unit.key.startswith(name + "/")]
        sources.append({"name": name, "path": recipe.sources[index].path, "units": len(mine),
                        "read": _summed(stats["read"] for stats in mine),
                        "kept": sum(stats["documents"] for stats in mine)})
    run = {"executor": "local", "workers": recipe.workers, "tasks": {}, **(run or {})}
    return {"units": len(units), "documents": documents, "tokens": tokens, "sources": sources, "stages": stages,
            **run, "seconds": {key: round(value, 3) for key, value in seconds.items()}}


def report_markdown(report: dict) -> str:
    """The report as Markdown: a summary line, the stage table and the sources."""
    lines = ["# Data pipeline report", "",
             f"{report['units']} units, {report['workers']} {report['executor']} worker(s): "
             f"{report['documents']} documents"
             + (f", {report['tokens']} tokens" if report["tokens"] is not None else "")
             + f" in {report['seconds']['total']} s ({report['documents_per_second']} documents/s read).", "",
             "| stage | in | out | counts |", "|---|---:|---:|---|"]
    for stage in report["stages"]:
        counts = ", ".join(f"{key} {value}" for key, value in stage["counts"].items()) or "–"
        flow_in = "–" if stage["in"] is None else stage["in"]
        lines.append(f"| {stage['stage']} | {flow_in} | {stage['out']} | {counts} |")
    lines += ["", "| source | path | units | kept | read counts |", "|---|---|---:|---:|---|"]
    for source in report["sources"]:
        counts = ", ".join(f"{key} {value}" for key, value in source["read"].items()) or "–"
        lines.append(f"| {source['name']} | {source['path']} | {source['units']} | {source['kept']} | {counts} |")
    lines += ["", "| phase | tasks | run now | seconds |", "|---|---:|---:|---:|"]
    for phase, value in report["seconds"].items():
        total, run = report["tasks"].get(phase, ("–", "–"))
        lines.append(f"| {phase} | {total} | {run} | {value} |")
    lines.append("")
    return "\n".join(lines)


def write_report(output, report: dict) -> None:
    """Write report.json and report.md into OUTPUT (a Path or a llmlab.data.paths.RemotePath) atomically."""
    from llmlab.data.paths import atomic_path

    with atomic_path(output / "report.json") as staging:
        staging.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_path(output / "report.md") as staging:
        staging.write_text(report_markdown(report))
