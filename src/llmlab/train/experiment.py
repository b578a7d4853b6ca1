"""Experiments: one recipe trained in named variants (lists of `section.field=value` overrides) × seeds, each an
ordinary resumable run directory, compared by held-out loss and divergence (and, with eval_lengths, held-out loss at
other sequence lengths than the training one; with probes, copying from context and continuing held-out text) in a
table and a figure."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path

import torch

from llmlab.errors import ConfigError
from llmlab.files import read_yaml

PLAN_FILE, RESULTS_FILE, PLOT_FILE, RUNS_DIRECTORY = "experiment.json", "results.csv", "results.png", "runs"
FIELDS = ("recipe", "title", "seeds", "variants", "overrides", "eval_lengths", "x", "probes", "tokenize_as")
LENGTH_EVAL_WINDOWS = 64  # held-out windows per length (fewer where the held-out split holds fewer)
PROBES = ("copy", "continuation")
PROBE_COLUMNS = {"copy": ("copy_loss", "first_copy_loss", "copy_accuracy"),  # what each probe adds to a result row
                 "continuation": ("continuation_loss", "choice_acc", "choice_acc_norm")}
COPY_PROBE_SEQUENCES = 64
CONTINUATION_PROBE_WINDOWS = 256  # held-out windows (fewer where the held-out split holds fewer)
CHOICES = 4  # the true continuation and three from other windows: chance is 1/4


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A recipe file, its variants (name → overrides) and the seeds every variant is trained with."""

    recipe: str
    variants: dict[str, list[str]]
    seeds: list[int]
    title: str = ""
    eval_lengths: list[int] = dataclasses.field(default_factory=list)
    x: str | None = None  # an override's key (e.g. train.lr): final losses are drawn against its value
    overrides: list[str] = dataclasses.field(default_factory=list)  # applied to every variant, before its own
    probes: list[str] = dataclasses.field(default_factory=list)  # PROBES run on every final model
    tokenize_as: str | None = None  # every variant reads the corpus tokenized with this objective's special tokens

    def x_value(self, name: str) -> float:
        """The value variant name gives the key x (every variant sets it once, to a positive number)."""
        return float(next(item for item in self.variants[name] if item.startswith(f"{self.x}=")).partition("=")[2])

    def group(self, name: str) -> str:
        """The line a variant belongs to when drawn against x: its name without x's value (post-lr1e-3: post-lr)."""
        value = next(item for item in self.variants[name] if item.startswith(f"{self.x}=")).partition("=")[2]
        return name.replace(value, "").strip("-_") or name


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read an experiment YAML file (recipe: a path relative to it; variants: name → list of overrides; seeds)."""
    path = Path(path)
    data = read_yaml(path, "experiment")
    if not isinstance(data, dict) or "recipe" not in data or "variants" not in data:
        raise ConfigError(f"the experiment {path} must be a mapping with recipe, variants and seeds.")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"the experiment {path} has no field {unknown[0]!r} (known: {', '.join(FIELDS)}).")
    variants, seeds = data["variants"], data.get("seeds", [0, 1, 2])
    if not isinstance(variants, dict) or not variants or not all(
            isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum() and isinstance(overrides, list)
            and all(isinstance(item, str) for item in overrides) for name, overrides in variants.items()):
        raise ConfigError(f"the experiment {path}: variants must map names (letters, digits, - and _) to lists of "
                          f"section.field=value overrides.")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(seed, int) and seed >= 0 for seed in seeds):
        raise ConfigError(f"the experiment {path}: seeds must be a list of non-negative whole numbers.")
    lengths = data.get("eval_lengths", [])
    if not isinstance(lengths, list) or not all(isinstance(length, int) and length > 1 for length in lengths):
        raise ConfigError(f"the experiment {path}: eval_lengths must be a list of sequence lengths above 1.")
    shared = data.get("overrides", [])
    if not isinstance(shared, list) or not all(isinstance(item, str) for item in shared):
        raise ConfigError(f"the experiment {path}: overrides must be a list of section.field=value overrides.")
    probes = data.get("probes", [])
    if not isinstance(probes, list) or not all(probe in PROBES for probe in probes):
        raise ConfigError(f"the experiment {path}: probes must be a list of {', '.join(PROBES)}.")
    from llmlab.data.tokenizer import OBJECTIVES

    tokenize_as = data.get("tokenize_as")
    if tokenize_as is not None and tokenize_as not in OBJECTIVES:
        raise ConfigError(f"the experiment {path}: tokenize_as must be an objective ({', '.join(OBJECTIVES)}), not "
                          f"{tokenize_as!r}.")
    experiment = Experiment(str((path.parent / str(data["recipe"])).resolve()), variants, seeds,
                            str(data.get("title", "")), lengths, data.get("x"), shared, probes, tokenize_as)
    if experiment.x is not None:
        for name, overrides in variants.items():
            values = [item.partition("=")[2] for item in overrides if item.startswith(f"{experiment.x}=")]
            try:
                if len(values) != 1 or float(values[0]) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"the experiment {path}: x is {experiment.x}, but the variant {name} does not set "
                                  f"it once to a positive number.") from None
    return experiment


def held_out_mixture(recipe, seq_len: int):
    """The recipe's held-out split cut into windows of seq_len tokens, none of them overlapping the training windows
    of the recipe's own length (a ConfigError when it holds none)."""
    from llmlab.data.mixture import Mixture
    from llmlab.train.data import open_sources

    data = recipe.data
    mixture = Mixture(open_sources(data), seq_len, data.seed, data.held_out_fraction, split="held_out",
                      split_seq_len=data.seq_len)
    if len(mixture) == 0:
        raise ConfigError(f"the held-out split holds no window of {seq_len} tokens; lower eval_lengths or raise "
                          f"data.held_out_fraction.")
    return mixture


@torch.no_grad()
def held_out_loss_at(run_dir: Path, recipe, seq_len: int) -> float:
    """The final model's mean cross-entropy on held-out windows of seq_len tokens (up to LENGTH_EVAL_WINDOWS of them,
    the recipe's held-out split cut into windows of that length), for evaluating past the training length."""
    import llmlab
    from llmlab.objectives.losses import language_model_loss
    from llmlab.train.data import held_out_batches
    from llmlab.train.pretrain import FINAL_DIRECTORY, build_objective

    model = llmlab.load(run_dir / FINAL_DIRECTORY).eval()
    data = recipe.data
    mixture = held_out_mixture(recipe, seq_len)
    windows = min(LENGTH_EVAL_WINDOWS, len(mixture))
    batch_size = min(data.batch_size, windows)
    objective = build_objective(recipe, model.tokenizer, model.config)
    total = count = 0.0
    for batch in held_out_batches(mixture, objective, windows // batch_size, batch_size, data.seed):
        _, labelled, metrics = language_model_loss(model, batch)
        total, count = total + float(metrics["cross_entropy"]), count + float(labelled)
    return total / count


@torch.no_grad()
def copy_probe(model, sequences: int = COPY_PROBE_SEQUENCES, seed: int = 0) -> dict[str, float]:
    """Copying from context (an induction probe, Olsson et al. 2022): random ordinary tokens x of half the model's
    context, fed as x + x; the mean cross-entropy and greedy accuracy of the second copy's tokens after its first
    (predictable only by looking back), and the cross-entropy of the first copy's for comparison."""
    import torch.nn.functional as F

    half = model.config.max_seq_len // 2
    special = {token_id for token_id in model.tokenizer.get_added_tokens_decoder()} if model.tokenizer else set()
    ordinary = torch.tensor([i for i in range(model.config.vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    tokens = ordinary[torch.randint(len(ordinary), (sequences, half), generator=generator)]
    ids = torch.cat([tokens, tokens], dim=1).to(model.device)
    logits = model(ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    second = slice(half, None)  # predictions of tokens half+1 … 2·half-1
    return {"copy_loss": float(loss[:, second].mean()), "first_copy_loss": float(loss[:, :half - 1].mean()),
            "copy_accuracy": float((logits[:, second].argmax(-1) == targets[:, second]).float().mean())}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a model reads a context and continues it: token ids before and after the context, and ids leading the
    continuation (given to the model, not scored)."""

    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    lead: tuple[int, ...] = ()


def continuation_layout(objective: str, tokenizer, eos_token_id: int | None) -> Layout:
    """The layout of the inputs the objective trained on that asks for a continuation: plain text for causal and
    prefix LM; span corruption's input ending in its first sentinel and EOS, the target opened by that sentinel; UL2's
    sequential (prefix-LM) denoiser, the input led by its [S] mode token and closed by EOS."""
    from llmlab.data.tokenizer import SENTINEL, UL2_MODE_TOKENS

    if objective in ("causal", "prefix_lm"):
        return Layout()
    if objective not in ("span_corruption", "ul2"):
        raise ConfigError(f"the continuation probe has no layout for models trained on the {objective} objective.")
    token = SENTINEL.format(0) if objective == "span_corruption" else UL2_MODE_TOKENS["S"]
    found = tokenizer.token_to_id(token) if tokenizer is not None else None
    if found is None or eos_token_id is None:
        raise ConfigError(f"the continuation probe needs the model's {token} token and EOS id, which the "
                          f"{objective} objective trained with.")
    if objective == "span_corruption":
        return Layout(after=(found, eos_token_id), lead=(found,))
    return Layout(before=(found,), after=(eos_token_id,))


@torch.no_grad()
def continuation_probe(model, windows: torch.Tensor, layout: Layout = Layout(), seed: int = 0) -> dict[str, float]:
    """Continuing held-out text, which every architecture can answer: each window's first half is the context, its
    second half the continuation. continuation_loss is the mean cross-entropy per continuation token given the context
    (through llmlab.evaluate.scoring: a decoder reads both, a prefix decoder the context as its prefix, an
    encoder-decoder the context in the encoder); choice_acc and choice_acc_norm are zero-shot multiple choice between
    the true continuation and CHOICES - 1 others from other windows (seeded), picked by summed log-likelihood and by
    log-likelihood per character of their text (tokens without a tokenizer), as lm-eval's acc and acc_norm."""
    from llmlab.evaluate.scoring import loglikelihood

    rows = windows.tolist()
    half = len(rows[0]) // 2
    contexts = [(*layout.before, *row[:half], *layout.after) for row in rows]
    continuations = [tuple(row[half:]) for row in rows]
    generator = torch.Generator().manual_seed(seed)
    options = []  # per window: its own continuation first, then others that are not the same tokens
    for index, continuation in enumerate(continuations):
        others = [j for j in torch.randperm(len(rows), generator=generator).tolist()
                  if j != index and continuations[j] != continuation][:CHOICES - 1]
        if len(others) < CHOICES - 1:
            raise ConfigError(f"the continuation probe needs {CHOICES} held-out windows with different "
                              f"continuations; the held-out split holds too few.")
        options.append([index, *others])
    requests = [(contexts[i], (*layout.lead, *continuations[j])) for i, choices in enumerate(options)
                for j in choices]
    requests += [(context, layout.lead) for context in contexts] if layout.lead else []
    scores = [result.logprob for result in loglikelihood(model, requests, batch_size=64)]
    lead = scores[len(options) * CHOICES:] or [0.0] * len(options)
    tokenizer = getattr(model, "tokenizer", None)
    lengths = [max(1, len(tokenizer.decode(list(c)))) if tokenizer is not None else len(c) for c in continuations]
    losses, hits, normalised_hits = [], 0, 0
    for i, choices in enumerate(options):
        logprobs = [score - lead[i] for score in scores[i * CHOICES:(i + 1) * CHOICES]]  # log p(continuation | lead)
        losses.append(-logprobs[0] / len(continuations[i]))
        hits += logprobs[0] > max(logprobs[1:])  # a tie is a miss
        per_character = [logprob / lengths[j] for logprob, j in zip(logprobs, choices)]
        normalised_hits += per_character[0] > max(per_character[1:])
    return {"continuation_loss": sum(losses) / len(losses), "choice_acc": hits / len(options),
            "choice_acc_norm": normalised_hits / len(options)}


def probe_metrics(run_dir: Path, probes: list[str], recipe) -> dict[str, float]:
    """The experiment's probes on a run's final model (the continuation probe on the held-out split of recipe, in
    the layout of its objective)."""
    if not probes:
        return {}
    import llmlab
    from llmlab.train.pretrain import FINAL_DIRECTORY

    model = llmlab.load(run_dir / FINAL_DIRECTORY).eval()
    metrics = copy_probe(model) if "copy" in probes else {}
    if "continuation" in probes:
        # the training windows' first tokens, as many as every layout's context and continuation fit the model with
        width = 2 * ((min(recipe.data.seq_len, model.config.max_seq_len) - 2) // 2)
        mixture = held_out_mixture(recipe, recipe.data.seq_len)
        windows = torch.from_numpy(mixture.samples(0, min(CONTINUATION_PROBE_WINDOWS, len(mixture))))[:, :width]
        layout = continuation_layout(recipe.objective_name, model.tokenizer, model.config.eos_token_id)
        metrics |= continuation_probe(model, windows, layout, seed=recipe.data.seed)
    return metrics


def final_metrics(run_dir: Path) -> dict:
    """A finished run's last held-out loss, first and last logged training loss, skipped steps, and whether it
    diverged: a non-finite or not falling loss, or steps the trainer skipped for a non-finite loss or a spike."""
    from llmlab.train.plot import read_metrics

    records = read_metrics(run_dir)
    losses = [record for record in records if record.get("loss") is not None]
    evaluations = [record["eval_loss"] for record in records if record.get("eval_loss") is not None]
    eval_loss = evaluations[-1] if evaluations else math.nan
    first, last = losses[0]["loss"], losses[-1]["loss"]
    return {"eval_loss": eval_loss, "first_loss": first, "final_loss": last,
            "skipped_steps": losses[-1].get("skipped_steps", 0),
            "diverged": not (math.isfinite(eval_loss) and math.isfinite(last)) or last >= first
            or losses[-1].get("skipped_steps", 0) > 0}


def check_variants(plan_file: Path, experiment: Experiment) -> dict[str, list[str]]:
    """Refuse a rerun that gives a variant already trained other overrides or tokenization (variants and seeds may be
    added); return the variants trained so far."""
    if not plan_file.is_file():
        return {}
    from llmlab.errors import DataError
    from llmlab.files import read_json_object

    plan = read_json_object(plan_file, DataError)
    if plan.get("overrides", []) != experiment.overrides:
        raise ConfigError(f"--out {plan_file.parent} holds runs trained with the overrides {plan.get('overrides', [])} "
                          f"for every variant, not {experiment.overrides}; choose another --out.")
    if plan.get("tokenize_as") != experiment.tokenize_as:
        raise ConfigError(f"--out {plan_file.parent} holds runs trained on the corpus tokenized for "
                          f"{plan.get('tokenize_as') or 'each objective'}, not for "
                          f"{experiment.tokenize_as or 'each objective'}; choose another --out.")
    trained = plan.get("variants") or {}
    for name, overrides in experiment.variants.items():
        if name in trained and trained[name] != overrides:
            raise ConfigError(f"--out {plan_file.parent} holds runs of the variant {name} with the overrides "
                              f"{trained[name]}, not {overrides}; rename the variant or choose another --out.")
    return trained


def run_experiment(experiment: Experiment, out: str | os.PathLike, progress: bool = True) -> list[dict]:
    """Train every variant × seed into out/runs/<variant>-s<seed> (skipping finished runs, resuming the others; a
    rerun may add variants and seeds), write out/results.csv and out/results.png, and return the rows."""
    from tqdm.auto import tqdm

    from llmlab.train.recipe import load_recipe
    from llmlab.train.runs import check_out_directory, is_finished, shared_data, train_unless_finished, write_text

    out = Path(out)
    recipes = {(name, seed): load_recipe(experiment.recipe, [*experiment.overrides, *overrides,
                                                             f"train.seed={seed}"])
               for name, overrides in experiment.variants.items() for seed in experiment.seeds}
    check_out_directory(out, PLAN_FILE, "recipe", experiment.recipe)
    trained = check_variants(out / PLAN_FILE, experiment)  # kept in the plan even when this rerun leaves them out
    plan = {**dataclasses.asdict(experiment), "variants": {**trained, **experiment.variants}}
    write_text(out / PLAN_FILE, json.dumps(plan, indent=2) + "\n")
    for key, recipe in recipes.items():  # the bundled corpus tokenized once per tokenization the variants ask for
        data = recipe.data
        objective = experiment.tokenize_as or recipe.objective_name
        name = f"data-{objective}-{data.vocab_size}-{data.max_chars or 'all'}"
        source = shared_data(dataclasses.replace(recipe, objective={"name": objective}), out / name, progress)[0]
        recipes[key] = dataclasses.replace(recipe, data=dataclasses.replace(data, source=source))
    runs = {key: out / RUNS_DIRECTORY / f"{key[0]}-s{key[1]}" for key in recipes}
    total = sum(recipe.train.steps for recipe in recipes.values())
    done = sum(recipes[key].train.steps for key, run in runs.items() if is_finished(run))
    with tqdm(total=total, initial=done, unit="step", desc="experiment", disable=not progress) as bar:
        for key, recipe in recipes.items():
            start = bar.n
            bar.set_postfix_str(runs[key].name)
            advance = lambda step, loss, start=start: bar.update(start + step + 1 - bar.n)  # noqa: E731
            train_unless_finished(recipe, runs[key], advance)
    rows = [{"variant": name, "seed": seed, **final_metrics(runs[name, seed]),
             **{f"loss_at_{length}": held_out_loss_at(runs[name, seed], recipes[name, seed], length)
                for length in experiment.eval_lengths},
             **probe_metrics(runs[name, seed], experiment.probes, recipes[name, seed]),
             "run": f"{RUNS_DIRECTORY}/{name}-s{seed}"}
            for name, seed in recipes]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / RESULTS_FILE, buffer.getvalue())
    plot_results(experiment, rows, runs, out / PLOT_FILE)
    return rows


def plot_results(experiment: Experiment, rows: list[dict], runs: dict, out: Path) -> None:
    """Held-out loss against step per variant (each seed faint, their mean bold), each variant's final held-out loss
    per seed (against x, one line per group of variants, when the experiment names x), with eval_lengths the loss
    against evaluation length, and with the continuation probe its loss and choice accuracies per seed, into out
    (PNG), atomically."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plotting needs the matplotlib package (pip install 'llmlab[plot]').") from None
    from llmlab.data.shards import atomic_path
    from llmlab.train.plot import read_metrics

    lengths, continued = experiment.eval_lengths, "continuation" in experiment.probes
    panels = 2 + bool(lengths) + 2 * continued
    figure = Figure(figsize=(5.5 * panels, 4.4), dpi=100, layout="constrained")
    curves, finals, *more = figure.subplots(1, panels)
    by_length, probed = more[:bool(lengths)], more[bool(lengths):]
    names = list(experiment.variants)
    group_of = experiment.group if experiment.x else (lambda name: name)  # drawn against x: one line per group
    groups, labelled = list(dict.fromkeys(map(group_of, names))), set()
    for index, name in enumerate(names):
        group = group_of(name)
        colour, first = f"C{groups.index(group) % 10}", group not in labelled
        labelled.add(group)
        series = []
        for seed in experiment.seeds:
            records = [r for r in read_metrics(runs[name, seed]) if r.get("eval_loss") is not None]
            steps, losses = [r["step"] for r in records], [r["eval_loss"] for r in records]
            curves.plot(steps, losses, color=colour, alpha=0.3, linewidth=0.8)
            series.append((steps, losses))
        if series and all(steps == series[0][0] for steps, _ in series):
            mean = [sum(values) / len(values) for values in zip(*(losses for _, losses in series))]
            curves.plot(series[0][0], mean, color=colour, linewidth=2, label=group if first else None)
        mine = [row for row in rows if row["variant"] == name]
        where = experiment.x_value(name) if experiment.x else index
        finals.plot([where] * len(mine), [row["eval_loss"] for row in mine], "o", color=colour, alpha=0.7)
        if not experiment.x:
            finals.plot([index], [sum(row["eval_loss"] for row in mine) / len(mine)], "_", color="black",
                        markersize=20)
        if by_length:
            means = [sum(row[f"loss_at_{length}"] for row in mine) / len(mine) for length in lengths]
            by_length[0].plot(lengths, means, "o-", color=colour, label=name)
        if probed:  # continuation loss, and acc (filled) beside acc_norm (open) per seed
            probed[0].plot([index] * len(mine), [row["continuation_loss"] for row in mine], "o", color=colour,
                           alpha=0.7)
            probed[0].plot([index], [sum(row["continuation_loss"] for row in mine) / len(mine)], "_", color="black",
                           markersize=20)
            probed[1].plot([index - 0.1] * len(mine), [row["choice_acc"] for row in mine], "o", color=colour)
            probed[1].plot([index + 0.1] * len(mine), [row["choice_acc_norm"] for row in mine], "o", color=colour,
                           fillstyle="none")
        diverged = sum(row["diverged"] for row in mine)
        if diverged:
            finals.annotate(f"{diverged} diverged", (where, max(row["eval_loss"] for row in mine)), fontsize=7)
    for index, group in enumerate(groups if experiment.x else ()):  # the mean of the seeds along x, per group
        members = sorted((name for name in names if group_of(name) == group), key=experiment.x_value)
        means = [sum(row["eval_loss"] for row in rows if row["variant"] == name) / len(experiment.seeds)
                 for name in members]
        finals.plot([experiment.x_value(name) for name in members], means, "-", color=f"C{index % 10}", label=group)
    own = " of its own objective" if probed else ""  # an objective's loss is not the others'
    curves.set(xlabel="step", ylabel="held-out loss", title=f"held-out loss{own} (seeds faint, mean bold)")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    if experiment.x:
        finals.set(xscale="log", xlabel=experiment.x)
        finals.legend(fontsize=8)
    else:
        finals.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    finals.set(ylabel="final held-out loss", title=f"final held-out loss, {len(experiment.seeds)} seeds "
                                                 f"({'lines' if experiment.x else '—'}: their mean)")
    finals.grid(alpha=0.3, axis="y")
    if by_length:
        by_length[0].set(xscale="log", xlabel="evaluation length (tokens)", ylabel="held-out cross-entropy",
                         title="held-out loss by evaluation length (mean of seeds)")
        by_length[0].set_xticks(lengths, [str(length) for length in lengths])
        by_length[0].minorticks_off()
        by_length[0].legend(fontsize=8)
        by_length[0].grid(alpha=0.3)
    if probed:
        probed[0].set(ylabel="cross-entropy per continuation token",
                      title="held-out continuation loss (— mean of seeds)")
        probed[1].axhline(1 / CHOICES, color="grey", linestyle="--", linewidth=1, label="chance")
        probed[1].set(ylabel="accuracy", title=f"zero-shot {CHOICES}-way choice: acc (●), acc_norm (○)")
        probed[1].legend(fontsize=8)
        for axis in probed:
            axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            axis.grid(alpha=0.3, axis="y")
    if experiment.title:
        figure.suptitle(experiment.title)
    with atomic_path(out) as staging:
        figure.savefig(staging, format="png")
