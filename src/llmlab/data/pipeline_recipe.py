"""Data pipeline recipes: a YAML file mapped onto dataclasses (sources, stages, tokenizer, shards, workers, output).

    sources:  [{path: bundled, format: bundled}, {path: data/*.jsonl.gz, text_field: content}]
    stages:   [{filter: {rules: "c4,fineweb"}}, {langid: {keep: en}}, pii, {dedup: {near: true}}]
    tokenizer: {train: {kind: byte_bpe, vocab_size: 4096}}      # or {path: tokenizer.json}
    shards:   {tokens_per_shard: 1000000}                      # omitted: one shard per source unit
    workers: 2
    output: runs/data/demo

Stage options carry the names of the standalone commands' options (`llmlab data filter --max-perplexity` is
`max_perplexity`). Every mapping is checked: a field that does not exist is a ConfigError naming it.
"""

from __future__ import annotations

import importlib.util

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from llmlab.data.sources import SourceConfig
from llmlab.errors import ConfigError
from llmlab.files import read_yaml
from llmlab.fields import from_mapping

# FineWeb's order of the heuristic rule sets, as `llmlab data filter --rules`
DEFAULT_RULES = "gopher-repetition,gopher-quality,c4,fineweb"


@dataclass(frozen=True)
class FilterStage:
    """`llmlab data filter`'s options: heuristic rule sets, blocklists, languages, classifier, perplexity."""

    rules: str = DEFAULT_RULES
    blocklist: tuple[str, ...] = ()
    languages: str | None = None
    classifier: str | None = None
    classifier_threshold: float = 0.5
    pareto: bool = False
    seed: int = 0
    ngram_model: str | None = None
    reference_model: str | None = None
    max_perplexity: float | None = None
    # per-language overrides of the rule sets' fields, {language: {rule set: {field: value}}}, or a YAML file of them
    language_rules: dict[str, dict[str, dict[str, Any]]] | str | None = None

    def __post_init__(self):
        if self.language_rules is not None:
            from llmlab.data.filters import check_language_rules

            check_language_rules(self.language_rules, "the filter stage's language_rules")


@dataclass(frozen=True)
class LangidStage:
    """`llmlab data langid`'s options: tag every document's language, keep only some if `keep` is given."""

    keep: str | None = None


@dataclass(frozen=True)
class PiiStage:
    """`llmlab data pii`: replace personal information by typed placeholders."""


@dataclass(frozen=True)
class DecontaminateStage:
    """`llmlab data decontaminate`'s options: drop or flag documents sharing n-grams with evaluation sets."""

    eval: tuple[str, ...] = ()
    eval_fields: str | None = None
    ngram: int = 13
    mode: str = "drop"

    def __post_init__(self):
        if not self.eval:
            raise ConfigError("the decontaminate stage needs eval: a list of evaluation JSONL files.")


@dataclass(frozen=True)
class DedupStage:
    """`llmlab data dedup`'s options; it runs across the whole corpus after the per-document stages."""

    exact: bool = True
    near: bool = False
    shingle: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 0
    index: str | None = None  # also remove what this index has seen (it is read, never written)
    repeats: bool = False
    units: str | None = None  # also remove lines or sentences seen earlier in the corpus: line | sentence

    def __post_init__(self):
        if self.units not in (None, "line", "sentence"):
            raise ConfigError(f"the dedup stage's units must be line or sentence, not {self.units!r}.")
        if self.units is not None and not self.exact:
            raise ConfigError("the dedup stage's units need exact: true (they run with document de-duplication).")


STAGES = {"filter": FilterStage, "langid": LangidStage, "pii": PiiStage, "decontaminate": DecontaminateStage,
          "dedup": DedupStage}


@dataclass(frozen=True)
class TokenizerTraining:
    """How to train the tokenizer on the de-duplicated corpus: its kind and size, and how much text it sees."""

    kind: str = "byte_bpe"
    vocab_size: int = 4096
    objective: str = "causal"  # adds the special tokens this pretraining objective needs
    special_tokens: tuple[str, ...] = ()  # more special tokens
    max_documents: int | None = 100_000  # the first documents of the corpus in unit order (a deterministic sample)
    max_chars: int | None = 100_000_000


@dataclass(frozen=True)
class TokenizerSection:
    """Train a tokenizer (`train`) or use an existing tokenizer.json (`path`)."""

    path: str | None = None
    train: TokenizerTraining | None = None

    def __post_init__(self):
        if (self.path is None) == (self.train is None):
            raise ConfigError("the recipe's tokenizer section needs exactly one of path and train.")


@dataclass(frozen=True)
class ShardsSection:
    """How the token shards are cut: at most tokens_per_shard tokens each (whole documents), or one per unit."""

    tokens_per_shard: int | None = None


@dataclass(frozen=True)
class PipelineRecipe:
    """A whole data pipeline: where the text comes from, what is done to it, and where the shards go."""

    sources: tuple[SourceConfig, ...]
    stages: tuple[Any, ...] = ()
    tokenizer: TokenizerSection | None = None
    shards: ShardsSection = ShardsSection()
    workers: int = 1
    output: str | None = None
    compression: str = "zstd"  # of the intermediate and cleaned JSONL documents: zstd or gzip

    def __post_init__(self):
        if not self.sources:
            raise ConfigError("the recipe names no sources.")
        if self.workers < 1:
            raise ConfigError(f"the recipe's workers must be at least 1, not {self.workers}.")
        if self.compression not in ("zstd", "gzip"):
            raise ConfigError(f"the recipe's compression must be zstd or gzip, not {self.compression!r}.")
        if self.compression == "zstd" and importlib.util.find_spec("zstandard") is None:
            raise ConfigError("the recipe's compression zstd needs the zstandard package (pip install "
                              "'llmlab[data]'), or set compression: gzip.")
        kinds = [type(stage) for stage in self.stages]
        if DedupStage in kinds and (kinds.count(DedupStage) > 1 or kinds[-1] is not DedupStage):
            raise ConfigError("the recipe's dedup stage must come once, last: it runs across the whole corpus.")

    @property
    def dedup(self) -> DedupStage | None:
        """The dedup stage, if any."""
        return next((stage for stage in self.stages if isinstance(stage, DedupStage)), None)

    @property
    def document_stages(self) -> tuple:
        """The stages that look at one document at a time (all but dedup), in order."""
        return tuple(stage for stage in self.stages if not isinstance(stage, DedupStage))

    def to_dict(self) -> dict:
        """The recipe as JSON-ready data, each stage as {name: options}."""
        data = dataclasses.asdict(self)
        data["stages"] = [{stage_name(stage): dataclasses.asdict(stage)} for stage in self.stages]
        return data


def stage_name(stage: Any) -> str:
    """The recipe name of a stage object (filter, langid, ...)."""
    return next(name for name, cls in STAGES.items() if isinstance(stage, cls))


def _stage(entry: Any, where: str) -> Any:
    """One stage from `name`, `{name: {options}}` or `{name: null}`."""
    if isinstance(entry, str):
        entry = {entry: None}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where} must be a stage name or a mapping {{name: options}} with one name.")
    (name, options), = entry.items()
    if name not in STAGES:
        raise ConfigError(f"{where} has no stage {name!r} (known: {', '.join(STAGES)}).")
    return from_mapping(STAGES[name], options, f"{where}.{name}")


def recipe_from_dict(data: Any, where: str = "recipe") -> PipelineRecipe:
    """A PipelineRecipe from a parsed YAML mapping, rejecting unknown fields and stages by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with sources, stages, tokenizer, shards, workers and output.")
    data = dict(data)
    stages = data.pop("stages", None) or []
    if not isinstance(stages, list):
        raise ConfigError(f"{where}: stages must be a list of stages.")
    if not isinstance(data.get("sources"), list) or not data["sources"]:
        raise ConfigError(f"{where}: sources must be a non-empty list of sources.")
    recipe = from_mapping(PipelineRecipe, data, where)
    stages = tuple(_stage(stage, f"{where}.stages[{i}]") for i, stage in enumerate(stages))
    return dataclasses.replace(recipe, stages=stages)


def load_pipeline_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineRecipe:
    """Read a YAML pipeline recipe; OVERRIDES replace top-level fields (workers, output, ...)."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    if data is None or data == {}:
        raise ConfigError(f"the recipe {path} is empty; give it sources and stages.")
    if isinstance(data, dict):
        data = {**data, **{key: value for key, value in (overrides or {}).items() if value is not None}}
    return recipe_from_dict(data, where=str(path))
