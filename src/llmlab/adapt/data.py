"""Fine-tuning data (survey §5.1): datasets read from JSONL, JSON, Parquet, a `datasets` save_to_disk directory or a
Hugging Face dataset name; records of the formats people have normalised; several datasets mixed (examples-
proportional with a per-dataset cap as T5 and FLAN, or by weights), pretraining text mixed in at a ratio (OPT-IML),
and a seeded held-out split.

Normalised records (those llmlab.adapt.method.FinetuneContext documents):
  alpaca, prompt_completion, messages → {"prompt": Prompt, "response": str}
  preference                          → {"prompt": Prompt, "chosen": str, "rejected": str}
  prompts                             → {"prompt": Prompt, **other columns}
  pretraining text                    → {"text": str} (every token labelled)
An Alpaca prompt is its fields {"instruction": …, "input": …}, which the templates render.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import ConfigError, DataError

FORMATS = ("auto", "alpaca", "prompt_completion", "messages", "preference", "prompts")
KINDS = {"alpaca": "sft", "prompt_completion": "sft", "messages": "sft", "preference": "preference",
         "prompts": "prompts"}
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "bot": "assistant", "model": "assistant"}  # OpenAI's roles and ShareGPT's `from` values
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq")
BUNDLED = "bundled"


@dataclass(frozen=True)
class DataSource:
    """One dataset of data.sources: where it is, its format, and its weight or cap in the mixture."""

    path: str
    format: str = "auto"
    weight: float | None = None  # mix by weights (all sources give one) instead of examples-proportionally
    cap: int | None = None  # at most this many of its examples per epoch (overrides data.cap)
    split: str = "train"  # of a Hugging Face dataset


@dataclass(frozen=True)
class FinetuneData:
    """The `data:` section of a fine-tuning recipe."""

    path: str | None = None
    format: str = "auto"  # alpaca | prompt_completion | messages | preference | prompts, or auto from the fields
    template: str = "alpaca"  # alpaca | chatml | llama2 | checkpoint | a Jinja file
    sources: tuple[DataSource, ...] = ()  # several datasets (then no path)
    split: str = "train"  # of a Hugging Face dataset given as path
    cap: int | None = None  # examples-proportional mixing: at most this many examples per dataset (T5's K)
    pretraining: str | None = None  # plain text mixed in: "bundled" (the bundled corpus) or a .txt/.jsonl file
    pretraining_ratio: float = 0.0  # the share of training examples that are pretraining text
    held_out_fraction: float = 0.05  # of each dataset, drawn with seed
    seed: int = 0

    def __post_init__(self):
        if (self.path is None) == (not self.sources):
            raise ConfigError("give the fine-tuning data as data.path or as data.sources, one of the two.")
        for source in self.all_sources():
            if source.format not in FORMATS:
                raise ConfigError(f"data format {source.format!r} is not one of {', '.join(FORMATS)}.")
            if source.cap is not None and source.cap < 1:
                raise ConfigError(f"the cap of {source.path} must be at least 1, not {source.cap}.")
        weights = [source.weight is not None for source in self.sources]
        if any(weights) and not all(weights):
            raise ConfigError("either every one of data.sources gives a weight, or none does.")
        if any(source.weight is not None and source.weight <= 0 for source in self.sources):
            raise ConfigError("the weights of data.sources must be positive.")
        if not 0 <= self.pretraining_ratio < 1:
            raise ConfigError(f"data.pretraining_ratio must be in [0, 1), not {self.pretraining_ratio}.")
        if self.pretraining_ratio and self.pretraining is None:
            raise ConfigError("data.pretraining_ratio needs data.pretraining (bundled or a text file).")
        if not 0 <= self.held_out_fraction < 1:
            raise ConfigError(f"data.held_out_fraction must be in [0, 1), not {self.held_out_fraction}.")
        if self.cap is not None and self.cap < 1:
            raise ConfigError(f"data.cap must be at least 1, not {self.cap}.")

    def all_sources(self) -> tuple[DataSource, ...]:
        """data.sources, or data.path as the one source."""
        return self.sources or (DataSource(self.path, self.format, split=self.split),)


# --- reading ----------------------------------------------------------------------------------------------------------

def read_rows(path: str, split: str = "train") -> Iterator[tuple[str, object]]:
    """(where, row) of every row of a JSONL/JSON/Parquet file, a directory of them, a `datasets` save_to_disk
    directory or a Hugging Face dataset name; where names the file and line (or row)."""
    location = Path(path)
    if location.is_dir():
        if any((location / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            yield from _dataset_rows(path, split, saved=True)
            return
        files = sorted(item for item in location.iterdir() if item.suffix in FILE_SUFFIXES and item.is_file())
        if not files:
            raise DataError(f"the data directory {path} holds no {', '.join(FILE_SUFFIXES)} files.")
        for file in files:
            yield from _file_rows(file)
    elif location.is_file():
        yield from _file_rows(location)
    elif location.suffix in FILE_SUFFIXES or path.startswith((".", "/")):
        raise DataError(f"the data file {path} does not exist.")
    else:
        yield from _dataset_rows(path, split, saved=False)


def _file_rows(file: Path) -> Iterator[tuple[str, object]]:
    if file.suffix in (".parquet", ".pq"):
        import pyarrow.parquet

        try:
            rows = pyarrow.parquet.read_table(file).to_pylist()
        except (OSError, ValueError) as error:
            raise DataError(f"{file} cannot be read as Parquet ({error}).") from None
        for number, row in enumerate(rows, 1):
            yield f"{file} row {number}", row
        return
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{file} cannot be read as UTF-8 text ({error}).") from None
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as error:
            raise DataError(f"{file} is not valid JSON ({error}).") from None
        if not isinstance(rows, list):
            raise DataError(f"{file} must hold a JSON list of records.")
        for number, row in enumerate(rows, 1):
            yield f"{file} record {number}", row
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{file} line {number}", json.loads(line)
            except ValueError:
                raise DataError(f"{file} line {number} is not valid JSON.") from None


def _dataset_rows(name: str, split: str, saved: bool) -> Iterator[tuple[str, object]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"reading {name} needs the datasets library (pip install datasets).") from None
    try:
        dataset = datasets.load_from_disk(name) if saved else datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types for a missing or unreachable dataset
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"the dataset {name} cannot be loaded ({reason}).") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"the dataset {name} has no split {split!r} (it has {', '.join(dataset)}).")
        dataset = dataset[split]
    for number, row in enumerate(dataset, 1):
        yield f"{name} row {number}", row


# --- normalising ------------------------------------------------------------------------------------------------------

def detect_format(row: object, where: str) -> str:
    """The format a record's fields show."""
    if isinstance(row, dict):
        keys = set(row)
        if keys & {"messages", "conversations"}:
            return "messages"
        if {"chosen", "rejected"} <= keys:
            return "preference"
        if "instruction" in keys:
            return "alpaca"
        if {"prompt", "completion"} <= keys:
            return "prompt_completion"
        if "prompt" in keys:
            return "prompts"
    raise DataError(f"{where} has none of the fields of a known format (instruction/output, prompt/completion, "
                    "messages, conversations, prompt/chosen/rejected, prompt); set data.format.")


def _field(row: dict, name: str, where: str, form: str):
    if name not in row or row[name] is None:
        raise DataError(f"{where} has no {name!r} field, which the {form} format needs.")
    return row[name]


def _text(row: dict, name: str, where: str, form: str, empty_ok: bool = False) -> str:
    value = _field(row, name, where, form)
    if not isinstance(value, str):
        raise DataError(f"{where}: the {name!r} field must be text, not {type(value).__name__}.")
    if not empty_ok and not value.strip():
        raise DataError(f"{where}: the {name!r} field is empty.")
    return value


def _messages(value, where: str, name: str) -> list[dict]:
    """OpenAI {role, content} or ShareGPT {from, value} messages as {role, content}."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {name!r} must be a non-empty list of messages.")
    messages = []
    for number, message in enumerate(value, 1):
        role = message.get("role", message.get("from")) if isinstance(message, dict) else None
        content = message.get("content", message.get("value")) if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise DataError(f"{where}: message {number} of {name!r} needs a role ({', '.join(ROLES)}) and text "
                            "content.")
        if ROLES[role] == "assistant" and not content.strip():
            raise DataError(f"{where}: message {number} of {name!r} is an empty assistant reply.")
        messages.append({"role": ROLES[role], "content": content})
    return messages


def _prompt(row: dict, where: str, form: str):
    value = _field(row, "prompt", where, form)
    if isinstance(value, list):
        return _messages(value, where, "prompt")
    return _text(row, "prompt", where, form)


def _reply(value, where: str, name: str) -> str:
    """A preference pair's reply: text, or messages ending with the assistant's."""
    if isinstance(value, list):
        messages = _messages(value, where, name)
        value = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the {name!r} reply is empty.")
    return value


def normalise(row: object, form: str, where: str) -> dict:
    """One record of the given format as a normalised record (see the module's docstring)."""
    if not isinstance(row, dict):
        raise DataError(f"{where} is not a JSON object.")
    if form == "alpaca":
        prompt = {"instruction": _text(row, "instruction", where, form),
                  "input": _text(row, "input", where, form, empty_ok=True) if row.get("input") is not None else ""}
        return {"prompt": prompt, "response": _text(row, "output", where, form)}
    if form == "prompt_completion":
        return {"prompt": _prompt(row, where, form), "response": _text(row, "completion", where, form)}
    if form == "messages":
        name = "messages" if "messages" in row else "conversations"
        messages = _messages(_field(row, name, where, form), where, name)
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: the conversation does not end with an assistant reply.")
        return {"prompt": messages[:-1], "response": messages[-1]["content"]}
    if form == "preference":
        chosen, rejected = _field(row, "chosen", where, form), _field(row, "rejected", where, form)
        if "prompt" in row:
            prompt = _prompt(row, where, form)
        elif isinstance(chosen, list) and isinstance(rejected, list):  # TRL's implicit prompt: the shared turns
            prompt = _messages(chosen, where, "chosen")[:-1]
            if not prompt or prompt != _messages(rejected, where, "rejected")[:-1]:
                raise DataError(f"{where}: without a 'prompt' field, chosen and rejected must share their turns "
                                "before the reply.")
        else:
            raise DataError(f"{where} has no 'prompt' field, which the preference format needs.")
        record = {"prompt": prompt, "chosen": _reply(chosen, where, "chosen"),
                  "rejected": _reply(rejected, where, "rejected")}
        if record["chosen"] == record["rejected"]:
            raise DataError(f"{where}: the chosen and rejected replies are identical.")
        return record
    if form == "prompts":
        return {**row, "prompt": _prompt(row, where, form)}
    raise ConfigError(f"data format {form!r} is not one of {', '.join(FORMATS)}.")


def read_dataset(source: DataSource) -> tuple[str, list[dict]]:
    """(format, normalised records) of one dataset; the format of its first record when auto."""
    form, records = source.format, []
    for where, row in read_rows(source.path, source.split):
        if form == "auto":
            form = detect_format(row, where)
        records.append(normalise(row, form, where))
    if not records:
        raise DataError(f"the dataset {source.path} holds no records.")
    return form, records


def read_pretraining_text(source: str) -> list[dict]:
    """Plain-text records {"text"}: the bundled corpus, a .txt file (one record per blank-line block) or a JSONL
    file's "text" fields."""
    if source == BUNDLED:
        from llmlab.data.corpus import bundled_documents

        return [{"text": document["text"]} for document in bundled_documents()]
    path = Path(source)
    if path.suffix == ".txt":
        try:
            blocks = path.read_text(encoding="utf-8").split("\n\n")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"the pretraining text {path} cannot be read ({error}).") from None
        return [{"text": block.strip()} for block in blocks if block.strip()]
    records = []
    for where, row in read_rows(source):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{where} has no 'text' field, which pretraining text needs.")
        records.append({"text": row["text"]})
    return records


# --- mixing -----------------------------------------------------------------------------------------------------------

def split_held_out(records: list[dict], fraction: float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(train, held out): a seeded shuffle, the last fraction (at least one, when there are two or more) held out."""
    shuffled = list(records)
    rng.shuffle(shuffled)
    count = max(1, int(len(shuffled) * fraction)) if fraction and len(shuffled) > 1 else 0
    return shuffled[:len(shuffled) - count], shuffled[len(shuffled) - count:]


def draw(records: list[dict], count: int, rng: random.Random) -> list[dict]:
    """count records: a seeded sample without repetition, each record repeated in turn when count exceeds them."""
    whole, rest = divmod(count, len(records))
    return list(records) * whole + rng.sample(records, rest)


def mixture_counts(sizes: list[int], weights: list[float | None], caps: list[int | None]) -> list[int]:
    """Examples per dataset per epoch: min(size, cap) (examples-proportional, Raffel et al. 2020 §3.5.2), or the
    total of those split by weight."""
    capped = [min(size, cap) if cap is not None else size for size, cap in zip(sizes, caps)]
    if weights[0] is None:
        return capped
    total = sum(capped)
    return [max(1, round(total * weight / sum(weights))) for weight in weights]


def load_examples(data: FinetuneData) -> tuple[str, list[dict], list[dict]]:
    """(kind of records: sft, preference or prompts; training examples; held-out examples) of the data section."""
    rng = random.Random(data.seed)
    trains, held_out, kinds = [], [], set()
    for source in data.all_sources():
        form, records = read_dataset(source)
        kinds.add(KINDS[form])
        train, held = split_held_out(records, data.held_out_fraction, rng)
        if not train:
            raise DataError(f"the dataset {source.path} has no examples left for training after the held-out split.")
        trains.append(train)
        held_out += held
    if len(kinds) > 1:
        raise ConfigError(f"data.sources mix records of different kinds ({', '.join(sorted(kinds))}).")
    counts = mixture_counts([len(train) for train in trains], [source.weight for source in data.all_sources()],
                            [source.cap or data.cap for source in data.all_sources()])
    examples = [example for train, count in zip(trains, counts) for example in draw(train, count, rng)]
    if data.pretraining_ratio:
        text = read_pretraining_text(data.pretraining)
        if not text:
            raise DataError(f"the pretraining text {data.pretraining} is empty.")
        count = math.ceil(len(examples) * data.pretraining_ratio / (1 - data.pretraining_ratio))
        examples += draw(text, count, rng)
    rng.shuffle(examples)
    return kinds.pop(), examples, held_out
