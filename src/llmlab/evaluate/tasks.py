"""Evaluation tasks (survey §7): what to ask a model and how to score it, from a YAML file or built in.

A task YAML names its kind, its data and Jinja templates over each document, as lm-evaluation-harness's doc_to_text,
doc_to_target and doc_to_choice do:

    name: my_mc
    kind: multiple_choice            # multiple_choice | loglikelihood | perplexity | generation
    data: questions.jsonl            # JSONL/JSON/Parquet beside the YAML or under --data-dir, or a datasets name/dir
    template: "Question: {{question}}\\nAnswer:"
    choices: choices                 # a field holding the list, or a template giving one
    target: "{{answer}}"             # the gold choice's index or text; a generation's reference
    fewshot: {k: 2, selection: random, seed: 0}
    metrics: [acc, acc_norm]

Built-in tasks read their files from --data-dir: `gsm8k`, `gsm8k_cot`, `gsm8k_cot_zeroshot`, `gsm8k_cot_sc`
(gsm8k/test.jsonl, gsm8k/train.jsonl), `humaneval` (HumanEval.jsonl.gz) and `perplexity:PATH` (a text file, a JSONL
of {"text": ...}, a directory of text files, or a token shard directory). Nothing is downloaded.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, DataError
from llmlab.infer.prompting import render  # lm-eval's Jinja rendering of doc_to_text and doc_to_target

KINDS = ("multiple_choice", "loglikelihood", "perplexity", "generation")
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "acc_norm_bytes"),
    "loglikelihood": ("acc", "perplexity"),
    "perplexity": ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"),
    "generation": ("exact_match", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "pass@k"),
}
DEFAULT_METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("acc", "perplexity"),
                   "perplexity": METRICS["perplexity"], "generation": ("exact_match",)}
ANSWERS = ("text", "gsm8k", "gsm8k_cot")  # how a generation's answer is extracted
SELECTIONS = ("random", "first", "bm25", "embedding")  # llmlab.infer.prompting.METHODS
ORDERS = ("as_selected", "most_similar_first", "most_similar_last", "random")
NORMALIZE_FIELDS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore", "strip", "squad")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".txt")
PASS_AT = re.compile(r"pass@(\d+)$")
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex's stop sequences (Chen et al. 2021)


@dataclass(frozen=True)
class FewShot:
    """How many demonstrations precede each query, where they come from and how they are chosen."""

    k: int = 0
    data: Any = None  # a path, a datasets name or a list of documents; None: the task's own data (query excluded)
    split: str | None = None
    selection: str = "first"
    seed: int = 0
    order: str = "as_selected"  # or most_similar_first, most_similar_last, random (llmlab.infer.prompting)
    encoder: str | None = None  # the encoder checkpoint of selection "embedding" (e.g. a MiniLM directory)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding for a generation task: greedy at temperature 0, else sampled; n samples per prompt."""

    max_new_tokens: int = 256
    until: tuple[str, ...] = ()
    temperature: float = 0.0
    n: int = 1


@dataclass(frozen=True)
class Task:
    """One evaluation task; `source` is the YAML file (or "built-in") named in errors."""

    name: str
    kind: str
    data: Any  # a resolved Path, a datasets name, or a list of documents
    template: str = "{{text}}"
    target: str | None = None
    choices: str | None = None
    split: str | None = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot: FewShot = field(default_factory=FewShot)
    metrics: tuple[str, ...] = ()
    normalize: dict = field(default_factory=dict)
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    answer: str = "text"
    zeroshot_cot: bool = False  # Kojima et al.'s two stages: reasoning, then the answer trigger
    vote: bool = False  # self-consistency: the majority of the n samples' answers (maj@n)
    source: str = "built-in"

    def describe(self) -> dict:
        """The task's configuration as JSON-serialisable data (for results.json)."""
        values = dataclasses.asdict(self)
        for where in (values, values["fewshot"]):
            if isinstance(where["data"], Path):
                where["data"] = str(where["data"])
        return values

    def pass_at(self) -> list[int]:
        """The k of each pass@k metric."""
        return [int(match.group(1)) for match in map(PASS_AT.match, self.metrics) if match]


# --- YAML ------------------------------------------------------------------------------------------------------

TASK_FIELDS = {f.name for f in dataclasses.fields(Task)} - {"source"}


def _check_fields(values: dict, allowed, where: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{where} has the unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))}).")


def task_from_dict(values: dict, source: str = "built-in", base: Path | None = None,
                   data_dir: str | os.PathLike | None = None) -> Task:
    """A validated Task from a YAML mapping; relative data paths resolve against base, then data_dir."""
    if not isinstance(values, dict):
        raise ConfigError(f"the task file {source} must hold a mapping of task fields.")
    _check_fields(values, TASK_FIELDS, f"the task file {source}")
    values = dict(values)
    for required in ("name", "kind", "data"):
        if required not in values:
            raise ConfigError(f"the task file {source} has no {required!r} field.")
    kind = values["kind"]
    if kind not in KINDS:
        raise ConfigError(f"the task file {source} has kind {kind!r}; choose one of {', '.join(KINDS)}.")
    fewshot = values.get("fewshot") or {}
    if isinstance(fewshot, int):
        fewshot = {"k": fewshot}
    _check_fields(fewshot, {f.name for f in dataclasses.fields(FewShot)}, f"fewshot in {source}")
    fewshot = FewShot(**fewshot)
    if not isinstance(fewshot.k, int) or fewshot.k < 0:
        raise ConfigError(f"fewshot.k in {source} must be an integer of at least 0, not {fewshot.k!r}.")
    if fewshot.selection not in SELECTIONS:
        raise ConfigError(f"fewshot.selection in {source} is {fewshot.selection!r}; choose one of "
                          f"{', '.join(SELECTIONS)}.")
    if fewshot.order not in ORDERS:
        raise ConfigError(f"fewshot.order in {source} is {fewshot.order!r}; choose one of {', '.join(ORDERS)}.")
    if fewshot.selection == "embedding" and fewshot.encoder is None:
        raise ConfigError(f"fewshot.selection embedding in {source} needs fewshot.encoder (an encoder checkpoint).")
    generation = values.get("generation") or {}
    _check_fields(generation, {f.name for f in dataclasses.fields(GenerationOptions)}, f"generation in {source}")
    until = generation.get("until", ())
    generation = GenerationOptions(**{**generation, "until": (until,) if isinstance(until, str) else tuple(until)})
    if not isinstance(generation.n, int) or generation.n < 1 or generation.max_new_tokens < 1:
        raise ConfigError(f"generation.n and generation.max_new_tokens in {source} must be positive integers.")
    normalize = values.get("normalize") or {}
    _check_fields(normalize, NORMALIZE_FIELDS, f"normalize in {source}")
    metrics = tuple(values.get("metrics") or DEFAULT_METRICS[kind])
    for metric in metrics:
        if (PASS_AT.match(str(metric)) and kind == "generation") or metric in METRICS[kind]:
            continue
        raise ConfigError(f"the task file {source} asks for the metric {metric!r}, which a {kind} task does not "
                          f"give (it gives {', '.join(METRICS[kind]).replace('pass@k', 'pass@K')}).")
    if values.get("answer", "text") not in ANSWERS:
        raise ConfigError(f"the task file {source} has answer {values['answer']!r}; choose one of "
                          f"{', '.join(ANSWERS)}.")
    if kind == "multiple_choice" and not values.get("choices"):
        raise ConfigError(f"the multiple-choice task file {source} has no 'choices' field.")
    if kind in ("multiple_choice", "loglikelihood") and not values.get("target"):
        raise ConfigError(f"the {kind} task file {source} has no 'target' field.")
    data = resolve_data(values["data"], base, data_dir, source)
    if fewshot.data is not None:
        fewshot = dataclasses.replace(fewshot, data=resolve_data(fewshot.data, base, data_dir, source))
    values.update(kind=kind, data=data, fewshot=fewshot, generation=generation, metrics=metrics, normalize=normalize)
    return Task(**values, source=source)


def resolve_data(spec, base: Path | None, data_dir, source: str):
    """A data path made absolute (beside the YAML first, then under data_dir), or a datasets name, or inline docs."""
    if isinstance(spec, list):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"'data' in {source} must be a path, a datasets name or a list of documents.")
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in (base, data_dir) if root is not None]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    if str(spec).endswith(LOCAL_SUFFIXES) or path.is_absolute() or str(spec).startswith("."):
        where = " or ".join(str(c) for c in candidates) or str(path)
        raise DataError(f"the data file {spec} of {source} does not exist (looked for {where}).")
    return str(spec)  # a Hugging Face datasets name


def load_task_file(path: str | os.PathLike, data_dir=None) -> Task:
    """The task a YAML file defines."""
    from llmlab.files import read_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"the task file {path} does not exist.")
    return task_from_dict(read_yaml(path, "task file"), str(path), path.resolve().parent, data_dir)


# --- documents -------------------------------------------------------------------------------------------------

def load_documents(data, split: str | None, source: str) -> list[dict]:
    """The documents (dicts) of a task's data: a local file or directory, a datasets name, or a list."""
    if isinstance(data, list):
        return [dict(doc) for doc in data]
    if isinstance(data, Path) and data.is_file():
        return [{"text": data.read_text(encoding="utf-8")}] if data.suffix == ".txt" else _read_file(data)
    if isinstance(data, Path) and (data / "index.json").is_file():
        return _shard_documents(data)
    if isinstance(data, Path) and not (data / "dataset_info.json").exists() and list(data.glob("*.txt")):
        return [{"text": path.read_text(encoding="utf-8"), "file": path.name} for path in sorted(data.glob("*.txt"))]
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading {data} for {source} needs the datasets package (pip install "
                          "'llmlab[data]').") from None
    try:
        if isinstance(data, Path) and (data / "dataset_info.json").exists():
            dataset = datasets.load_from_disk(str(data))
        else:
            dataset = datasets.load_dataset(str(data), split=split)
        if isinstance(dataset, datasets.DatasetDict):
            if split is None or split not in dataset:
                raise DataError(f"the dataset {data} of {source} has the splits {', '.join(dataset)}; name one "
                                "with 'split'.")
            dataset = dataset[split]
    except DataError:
        raise
    except Exception as error:  # datasets raises many kinds; the user needs the one line
        raise DataError(f"the dataset {data} of {source} cannot be loaded ({str(error).splitlines()[0]}).") from None
    return [dict(doc) for doc in dataset]


def _shard_documents(directory: Path) -> list[dict]:
    """Each document of a token shard directory as {"tokens": ids} (without the end-of-text id after it)."""
    from llmlab.data.shards import TokenShards

    shards = TokenShards(directory)
    starts = [*shards.document_starts().tolist(), shards.tokens]
    return [{"tokens": shards.read(begin, end - begin - 1).tolist()} for begin, end in zip(starts, starts[1:])]


def _read_file(path: Path) -> list[dict]:
    name = path.name
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as parquet

            return parquet.read_table(path).to_pylist()
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            if name.endswith(".json"):
                docs = json.load(handle)
                if isinstance(docs, dict) and len(docs) == 1 and isinstance(next(iter(docs.values())), list):
                    docs = next(iter(docs.values()))
            else:
                docs = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as error:
        raise DataError(f"the data file {path} cannot be read ({error}).") from None
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow (pip install 'llmlab[data]').") from None
    if not isinstance(docs, list) or not all(isinstance(doc, dict) for doc in docs):
        raise DataError(f"the data file {path} must hold JSON objects, one per document.")
    return docs


# --- templates -------------------------------------------------------------------------------------------------

def template_variables(template: str) -> set[str]:
    """The variables a Jinja template reads."""
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return meta.find_undeclared_variables(Environment().parse(template))  # parsed only, never run
    except TemplateSyntaxError as error:
        raise ConfigError(f"the template {template!r} does not parse ({error.message}).") from None


def check_templates(task: Task, docs: list[dict]) -> None:
    """ConfigError naming a template variable that the task's first document does not have, where rendering it
    fails."""
    if not docs:
        raise DataError(f"the data of task {task.name} ({task.source}) holds no documents.")
    keys = set(docs[0])
    templates = {"template": task.template, "target": task.target}
    if task.choices and task.choices not in keys:
        templates["choices"] = task.choices
    for name, template in templates.items():
        if not template:
            continue
        try:
            render(template, docs[0])  # rendered, since a template may read a field only where it is defined
        except ConfigError:
            missing = sorted(template_variables(template) - keys)
            if not missing:
                raise
            raise ConfigError(f"the {name} of task {task.name} ({task.source}) uses {missing[0]!r}, which its "
                              f"documents do not have (they have {', '.join(sorted(keys))}).") from None


def doc_choices(task: Task, doc: dict) -> list[str]:
    """A multiple-choice document's choices: the field named by `choices`, or the template's list."""
    value = doc[task.choices] if task.choices in doc else render(task.choices, doc)
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"the choices of task {task.name} ({task.source}) give {value!r}, not a list.") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"the choices of task {task.name} ({task.source}) give {value!r}, not a list of texts.")
    return [str(choice) for choice in value]


def doc_gold(task: Task, doc: dict, choices: list[str]) -> int:
    """The index of a multiple-choice document's gold choice (the target is an index or a choice's text)."""
    target = render(task.target, doc).strip() if task.target not in doc else doc[task.target]
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        index = int(target)
        if 0 <= index < len(choices):
            return index
    elif target in choices:
        return choices.index(target)
    raise DataError(f"the target {target!r} of a document of task {task.name} ({task.source}) is neither a choice's "
                    f"index nor one of its choices.")


def doc_target(task: Task, doc: dict) -> str | list[str]:
    """A document's reference text: the target template filled, or the field it names (a list: several
    references)."""
    if task.target in doc:  # a field's name, as lm-eval's doc_to_target may be
        value = doc[task.target]
        return [str(ref) for ref in value] if isinstance(value, list) else str(value)
    return render(task.target, doc) if task.target else ""


# --- built-in tasks --------------------------------------------------------------------------------------------

GSM8K = {"kind": "generation", "data": "gsm8k/test.jsonl", "template": "Question: {{question}}\nAnswer:",
         "target": "{{answer}}", "fewshot": {"k": 8, "data": "gsm8k/train.jsonl", "selection": "first"},
         "generation": {"until": ["Question:", "</s>", "<|im_end|>"], "max_new_tokens": 256},
         "metrics": ["exact_match"], "answer": "gsm8k"}  # lm-eval's gsm8k.yaml, with 8 shots
HUMANEVAL = {"kind": "generation", "data": "HumanEval.jsonl.gz", "template": "{{prompt}}", "target_delimiter": "",
             "generation": {"until": list(HUMANEVAL_STOP), "max_new_tokens": 512}, "metrics": ["pass@1"]}
BUILTIN = ("gsm8k", "gsm8k_cot", "gsm8k_cot_zeroshot", "gsm8k_cot_sc", "humaneval", "perplexity:PATH")
SELF_CONSISTENCY_SAMPLES = 5


def _gsm8k_cot(name: str, samples: int | None) -> dict:
    """lm-eval's gsm8k-cot (Wei et al.'s eight exemplars), its zero-shot form in Kojima et al.'s two stages, or its
    self-consistency form (Wang et al.: sampled chains at T = 0.7, the majority answer)."""
    from llmlab.infer import prompting

    cot = {**GSM8K, "template": prompting.GSM8K_COT_TEMPLATE.text, "target": prompting.GSM8K_COT_TEMPLATE.target,
           "answer": "gsm8k_cot", "generation": {"until": list(prompting.GSM8K_COT_STOP), "max_new_tokens": 256},
           "fewshot": {"k": 8, "data": [dict(e) for e in prompting.GSM8K_COT_EXEMPLARS], "selection": "first"}}
    if name == "gsm8k_cot_zeroshot":
        return {**cot, "fewshot": {"k": 0}, "zeroshot_cot": True,
                "template": prompting.zero_shot_cot_prompt("{{question}}")}
    if name == "gsm8k_cot_sc":
        sampling = prompting.SELF_CONSISTENCY_CONFIG
        return {**cot, "vote": True, "generation": {**cot["generation"], "temperature": sampling.temperature,
                                                    "n": samples or SELF_CONSISTENCY_SAMPLES}}
    return cot


def builtin_task(name: str, data_dir=None, samples: int | None = None) -> Task:
    """A built-in task by name (see BUILTIN), its files under data_dir; samples sets n for humaneval and *_sc."""
    if name.startswith("perplexity:"):
        path = name.split(":", 1)[1]
        return task_from_dict({"name": "perplexity", "kind": "perplexity", "data": path}, "--tasks perplexity",
                              Path.cwd(), data_dir) if path.endswith(LOCAL_SUFFIXES) else _perplexity(path, data_dir)
    if name == "gsm8k":
        values = GSM8K
    elif name in ("gsm8k_cot", "gsm8k_cot_zeroshot", "gsm8k_cot_sc"):
        values = _gsm8k_cot(name, samples)
    elif name == "humaneval":
        n = samples or 1
        values = {**HUMANEVAL, "generation": {**HUMANEVAL["generation"], "n": n,
                                              "temperature": 0.8 if n > 1 else 0.0},  # Chen et al.'s T for pass@10+
                  "metrics": [f"pass@{k}" for k in (1, 10, 100) if k <= n]}
    else:
        raise ConfigError(f"there is no task {name!r}; give a task YAML file or one of {', '.join(BUILTIN)}.")
    if data_dir is None:
        raise ConfigError(f"the task {name} reads its data from --data-dir (e.g. a directory holding "
                          f"{values['data']}).")
    return task_from_dict({"name": name, **values}, f"the built-in task {name}", None, data_dir)


def _perplexity(path: str, data_dir) -> Task:
    """perplexity:PATH on a directory (of text files, or token shards) or a text file of another name."""
    candidates = [Path(path)] + ([Path(data_dir) / path] if data_dir is not None else [])
    found = next((candidate for candidate in candidates if candidate.exists()), None)
    if found is None:
        raise DataError(f"the perplexity data {path} does not exist.")
    return Task(name="perplexity", kind="perplexity", data=found.resolve(), metrics=METRICS["perplexity"],
                source=f"--tasks perplexity:{path}")


def resolve_tasks(spec: str, data_dir=None, samples: int | None = None) -> list[Task]:
    """Tasks from --tasks: comma-separated built-in names, perplexity:PATH, or YAML files."""
    tasks = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item.endswith((".yaml", ".yml")):
            tasks.append(load_task_file(item, data_dir))
        else:
            tasks.append(builtin_task(item, data_dir, samples))
    if not tasks:
        raise ConfigError("--tasks names no task.")
    return tasks
