"""The adaptation demonstration of docs/adaptation.md as the `llmlab` commands it runs: synthetic tasks, SFT of a
pretrained model (all weights, and LoRA), DPO on preference pairs built from each SFT model, GRPO with an exact-match
reward on addition, and exact-match accuracy on held-out examples before and after each (`llmlab evaluate` with
recipes/tasks/synthetic.yaml and synthetic-addition.yaml), for each train.seed; then a table (report.md) and a plot of reward and accuracy against
steps (curves.png).

    python -m llmlab.adapt.report --base runs/demo --out runs/adaptation --seeds 0,1,2 [section.field=value ...]

Every command is printed before it runs; one whose output exists is skipped, so a killed run continues where it
stopped. Overrides are passed to every `llmlab finetune` of the stage they name (sft., dpo., grpo.), e.g.
`sft.train.steps=100`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
from pathlib import Path

from llmlab.errors import ConfigError

RECIPES = Path(__file__).parents[3] / "recipes"  # a source checkout's recipes/
STAGES = ("sft", "sft-lora", "dpo", "grpo")
# (name in the tables, the evaluation task, its held-out data, where its evaluations go: out/eval/LABEL-SUFFIX)
HELD_OUT = (("all", RECIPES / "tasks" / "synthetic.yaml", RECIPES / "tasks" / "data" / "synthetic-held-out.jsonl",
             "held-out"),
            ("addition", RECIPES / "tasks" / "synthetic-addition.yaml",
             RECIPES / "tasks" / "data" / "synthetic-addition-held-out.jsonl", "held-out-addition"))
# (file, finetune-data synthetic options): the training data, sharing no prompt with the held-out data
DATA = (
    ("sft-tasks.jsonl", ["--n", "2000", "--seed", "0"]),
    ("addition.jsonl", ["--n", "500", "--seed", "3", "--tasks", "addition", "--exclude", str(HELD_OUT[1][2])]),
)
PAIRS = 400  # preference pairs per seed


def llmlab(argv: list[str], output: Path) -> None:
    """Print and run one llmlab command, unless output (what it writes) exists; a failure stops the demonstration."""
    from llmlab.cli.main import main

    if output.exists():
        print(f"# done already: llmlab {shlex.join(argv)}", flush=True)
        return
    print(f"$ llmlab {shlex.join(argv)}", flush=True)
    if main(argv) != 0:
        raise ConfigError(f"the demonstration stopped at `llmlab {shlex.join(argv)}`.")


def evaluate(model: Path, label: str, task: Path, suffix: str, out: Path) -> float:
    """Exact-match accuracy of model's greedy answers to an evaluation task (evaluated into out/eval/label-suffix)."""
    directory = out / "eval" / f"{label}-{suffix}"
    llmlab(["evaluate", str(model), "--tasks", str(task), "--out", str(directory), "--batch-size", "32",
            "--no-progress"], directory / "results.json")
    results = json.loads((directory / "results.json").read_text())["results"]
    return next(iter(results.values()))["metrics"]["exact_match"]["value"]


def finetune(stage: str, recipe: str, out: Path, overrides: list[str]) -> Path:
    """Run one fine-tuning stage into out/stage and return its final model."""
    llmlab(["finetune", str(RECIPES / f"finetune-{recipe}.yaml"), "--out", str(out / stage), "--no-progress",
            *overrides], out / stage / "final")
    return out / stage / "final"


def demonstrate(base: Path, out: Path, seeds: list[int], overrides: dict[str, list[str]]) -> dict:
    """Run every stage for every seed; return {stage: {held-out set: [accuracy per seed]}} with the base's."""
    out.mkdir(parents=True, exist_ok=True)
    for name, options in DATA:
        llmlab(["finetune-data", "synthetic", str(out / name), *options], out / name)
    accuracy = {"base": {name: [evaluate(base, "base", task, suffix, out)] * len(seeds)
                         for name, task, _, suffix in HELD_OUT}}
    for stage in STAGES:
        accuracy[stage] = {"all": [], "addition": []}
    for seed in seeds:
        run = out / f"seed-{seed}"
        common = [f"train.seed={seed}"]
        sft = finetune("sft", "sft", run, [f"model.path={base}", f"data.path={out / 'sft-tasks.jsonl'}", *common,
                                           *overrides["sft"]])
        lora = finetune("sft-lora", "sft", run, [f"model.path={base}", f"data.path={out / 'sft-tasks.jsonl'}",
                                                 "adapter.kind=lora", *common, *overrides["sft-lora"]])
        pairs = run / "pairs.jsonl"
        llmlab(["finetune-data", "preference", str(pairs), "--model", str(sft), "--n", str(PAIRS), "--seed",
                str(100 + seed), "--exclude", str(HELD_OUT[0][2])], pairs)
        template = RECIPES / "adaptation" / "prompt.jinja"
        dpo = finetune("dpo", "dpo", run, [f"model.path={sft}", f"data.path={pairs}", f"data.template={template}",
                                           *common, *overrides["dpo"]])
        grpo = finetune("grpo", "grpo", run, [f"model.path={sft}", f"data.path={out / 'addition.jsonl'}", *common,
                                              *overrides["grpo"]])
        for stage, model in (("sft", sft), ("sft-lora", lora), ("dpo", dpo), ("grpo", grpo)):
            for name, task, _, suffix in HELD_OUT:
                accuracy[stage][name].append(evaluate(model, f"seed-{seed}-{stage}", task, suffix, out))
    return accuracy


def per_task(out: Path, labels: list[str]) -> dict[str, float]:
    """Exact-match accuracy per synthetic task on the main held-out set, over the evaluations of the given labels."""
    tasks = [json.loads(line)["task"] for line in HELD_OUT[0][2].read_text().splitlines()]
    hits: dict[str, list[float]] = {}
    for label in labels:
        samples = (out / "eval" / f"{label}-{HELD_OUT[0][3]}" / "samples.jsonl").read_text().splitlines()
        for sample in map(json.loads, samples):
            hits.setdefault(tasks[sample["doc_id"]], []).append(sample["scores"]["exact_match"])
    return {task: statistics.mean(values) for task, values in sorted(hits.items())}


def task_table(out: Path, seeds: list[int]) -> str:
    """A Markdown table of exact-match accuracy per task (columns) and model (rows), the mean over seeds."""
    rows = {"base": per_task(out, ["base"])}
    rows.update({stage: per_task(out, [f"seed-{seed}-{stage}" for seed in seeds]) for stage in STAGES})
    tasks = list(rows["base"])
    lines = ["| model | " + " | ".join(tasks) + " |", "| --- | " + " | ".join("---:" for _ in tasks) + " |"]
    lines += [f"| {stage} | " + " | ".join(f"{100 * row[task]:.0f}" for task in tasks) + " |"
              for stage, row in rows.items()]
    return "\n".join(lines) + "\n"


def held_out_reports(out: Path, seeds: list[int]) -> str:
    """A Markdown table of what DPO and GRPO measured on their own held-out data (finetune_report.json), per seed."""
    lines = ["| stage | metric | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in seeds) + " |"]
    for stage, names in (("dpo", ("rewards/accuracies", "rewards/margins")), ("grpo", ("reward",))):
        reports = [json.loads((out / f"seed-{seed}" / stage / "finetune_report.json").read_text()) for seed in seeds]
        lines += [f"| {stage} | {name} | " + " | ".join(f"{report[name]:.3f}" for report in reports) + " |"
                  for name in names]
    return "\n".join(lines) + "\n"


def mean_and_spread(values: list[float]) -> str:
    """mean ± sample standard deviation, as percentages."""
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def table(accuracy: dict, seeds: list[int]) -> str:
    """A Markdown table of exact-match accuracy per stage and held-out set, the mean over seeds and each seed's."""
    lines = ["| model | held-out set | exact match % (mean ± sd) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in seeds) + " |"]
    for stage, sets in accuracy.items():
        for held_out, values in sets.items():
            lines.append(f"| {stage} | {held_out} | {mean_and_spread(values)} | "
                         + " | ".join(f"{100 * value:.1f}" for value in values) + " |")
    return "\n".join(lines) + "\n"


def metric_curve(run: Path, name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric in a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    points = [(record["step"], record[name]) for record in records if name in record]
    return [step for step, _ in points], [value for _, value in points]


def plot(out: Path, seeds: list[int], path: Path) -> None:
    """GRPO's rollout reward (the exact-match rate of its samples), DPO's preference accuracy and the SFT held-out
    loss against steps, one line per seed."""
    from matplotlib.figure import Figure

    panels = (("grpo", "reward", "GRPO: exact-match reward of the rollouts"),
              ("dpo", "rewards/accuracies", "DPO: chosen reward > rejected (batch)"),
              ("sft", "eval_loss", "SFT: held-out loss"))
    figure = Figure(figsize=(15, 4))
    for axes, (stage, name, title) in zip(figure.subplots(1, len(panels)), panels):
        window = 5 if stage != "sft" else 1  # a moving mean over the noisy per-step values
        for seed in seeds:
            steps, values = metric_curve(out / f"seed-{seed}" / stage, name)
            smoothed = [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]
            axes.plot(steps, smoothed, label=f"seed {seed}")
        axes.set(title=title, xlabel="step", ylabel=name if window == 1 else f"{name} (mean of {window} steps)")
        axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration, write report.md and curves.png into --out, and print the table."""
    parser = argparse.ArgumentParser(prog="python -m llmlab.adapt.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the pretrained model (e.g. runs/demo from `llmlab demo`)")
    parser.add_argument("--out", required=True, help="the directory of every file the demonstration writes")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    parser.add_argument("overrides", nargs="*", metavar="stage.section.field=value",
                        help=f"fine-tuning overrides of a stage ({', '.join(STAGES)})")
    arguments = parser.parse_args(argv)
    overrides = {stage: [] for stage in STAGES}
    for override in arguments.overrides:
        stage, _, rest = override.partition(".")
        if stage not in overrides:
            parser.error(f"the override {override!r} names no stage ({', '.join(STAGES)}).")
        overrides[stage].append(rest)
    seeds = [int(seed) for seed in arguments.seeds.split(",")]
    out = Path(arguments.out)
    accuracy = demonstrate(Path(arguments.base), out, seeds, overrides)
    text = (table(accuracy, seeds) + "\nBy task, on the held-out set of all tasks (mean over seeds):\n\n"
            + task_table(out, seeds) + "\nOn the stages' own held-out data (finetune_report.json):\n\n"
            + held_out_reports(out, seeds))
    (out / "report.md").write_text(text)
    plot(out, seeds, out / "curves.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
