"""Recipes: YAML files mapped onto dataclasses (model, data, objective, train sections), with `section.field=value`
overrides."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmlab.errors import ConfigError
from llmlab.files import read_yaml
from llmlab.fields import coerce, from_mapping
from llmlab.model import presets
from llmlab.model.config import ModelConfig
from llmlab.objectives import UL2, GLMBlankInfilling, MaskedLM, PrefixLM, SpanCorruption
from llmlab.train.loop import TrainConfig

# objective name → its class (None: causal_lm, a function without parameters)
OBJECTIVES = {"causal": None, "prefix_lm": PrefixLM, "span_corruption": SpanCorruption, "ul2": UL2,
              "glm": GLMBlankInfilling, "mlm": MaskedLM}
# constructor parameters that pretraining fills in from the tokenizer and the model, never from a recipe
SUPPLIED_PARAMETERS = {"eos_token_id", "pad_token_id", "vocab_size", "sentinel_ids", "mode_token_id", "mode_token_ids",
                       "mask_token_id", "sop_token_id", "eop_token_id", "special_token_ids", "sentence_end_ids",
                       "denoisers"}


def objective_parameters(name: str) -> list[str]:
    """The parameters a recipe may give the named objective."""
    cls = OBJECTIVES[name]
    if cls is None:
        return []
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in SUPPLIED_PARAMETERS]


@dataclass(frozen=True)
class ShardSource:
    """One item of data.sources: a shard directory with a weight, or a number of epochs."""

    path: str
    weight: float | None = None
    epochs: float | None = None


@dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from and how they are batched: the `data:` section of a recipe."""

    source: str | None = "bundled"  # "bundled" (the standard library's docstrings) or a shard directory
    sources: tuple[ShardSource, ...] = ()  # several shard directories blended by weight or epochs (then no source)
    vocab_size: int = 4096  # of the tokenizer trained on the bundled corpus
    max_chars: int | None = None  # of the bundled corpus (None: all of it)
    seq_len: int = 128
    batch_size: int = 8
    held_out_fraction: float = 0.05
    seed: int = 0
    # a share of every batch drawn from a small repeated subset (the first repeated_windows training windows of the
    # data; never in the held-out split): the duplicated-data experiment (survey §4.1.3, Hernandez et al. 2022)
    repeated_fraction: float = 0.0
    repeated_windows: int = 64

    def __post_init__(self):
        if self.sources and self.source is not None:
            raise ConfigError(f"data.source ({self.source}) and data.sources both name the data; give one "
                              "(data.source=null to use data.sources).")
        if not self.sources and self.source is None:
            raise ConfigError("data.source or data.sources must name the data.")
        for name in ("seq_len", "batch_size", "repeated_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, not {getattr(self, name)}.")
        if not 0.0 <= self.repeated_fraction < 1.0:
            raise ConfigError(f"data.repeated_fraction must lie in [0, 1), not {self.repeated_fraction}.")
        if self.repeated_fraction and self.sources:
            raise ConfigError("data.repeated_fraction repeats a subset of data.source; it cannot be combined with "
                              "data.sources.")


@dataclass(frozen=True)
class Recipe:
    """A whole pretraining run: the model (a preset and/or ModelConfig fields), its data, its objective (a name and
    that objective's parameters) and how to train it."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = DataConfig()
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "causal"})
    train: TrainConfig = TrainConfig()

    @property
    def objective_name(self) -> str:
        """The objective's name."""
        return self.objective.get("name", "causal")

    def model_config(self, **fields: Any) -> ModelConfig:
        """The ModelConfig: the named preset (if any) with the recipe's fields, then fields (e.g. the vocabulary)."""
        data = {**self.model, **fields}
        preset, size = data.pop("preset", None), data.pop("size", None)
        if preset is None:
            return ModelConfig.from_dict(data, where="the recipe's model section")
        return presets.get(preset, size, **data)


SECTIONS = {"data": DataConfig, "train": TrainConfig}


def _override_fields(section: str, objective: str) -> dict[str, Any] | None:
    """The fields an override may set in a section, with their types (None: an unknown objective, named later)."""
    if section in SECTIONS:
        hints = typing.get_type_hints(SECTIONS[section])
        return {f.name: hints[f.name] for f in dataclasses.fields(SECTIONS[section]) if f.init}
    if section == "model":
        hints = typing.get_type_hints(ModelConfig)
        return {"preset": str, "size": str, **{f.name: hints[f.name] for f in dataclasses.fields(ModelConfig)}}
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        return None
    hints = typing.get_type_hints(OBJECTIVES[objective]) if OBJECTIVES[objective] else {}
    return {"name": str, **{name: hints[name] for name in objective_parameters(objective)}}


def _is_text(hint: Any) -> bool:
    """Whether a field's type is str, or str or None."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return hint is str or (union and set(typing.get_args(hint)) == {str, type(None)})


def override_value(text: str, hint: Any) -> Any:
    """An override's text as a value of a field of type hint: a text field takes the text as it is (null: None where
    allowed), any other field reads it as YAML."""
    if _is_text(hint):
        return None if text in ("null", "~") and hint is not str else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: list[str], objective: str = "causal") -> dict[str, dict[str, Any]]:
    """`section.field=value` strings as {section: {field: value}}: a text field takes the text as it is (null: None
    where allowed), any other field reads it as YAML; an unknown field or a bad value is an error naming the override.
    objective: the recipe's objective name, unless an override gives objective.name."""
    parsed: dict[str, dict[str, Any]] = {}
    for override in overrides:
        if override.startswith("objective.name="):
            objective = override.partition("=")[2]
    for override in overrides:
        key, separator, text = override.partition("=")
        section, dot, name = key.partition(".")
        if not separator or not dot or section not in ("model", "objective", *SECTIONS) or not name:
            raise ConfigError(f"the override {override!r} is not of the form model|data|objective|train.FIELD=VALUE.")
        fields = _override_fields(section, objective)
        if fields is not None and name not in fields:
            known = "a ModelConfig field, preset or size" if section == "model" else ", ".join(fields)
            raise ConfigError(f"the override {override!r} names no field of {section} (known: {known}).")
        hint = fields[name] if fields is not None else None
        value = override_value(text, hint)
        if section in SECTIONS:
            coerce(value, hint, f"{key} in the override {override!r}")  # checked here to name the override
        parsed.setdefault(section, {})[name] = value
    return parsed


def _objective(values: Any, where: str) -> dict[str, Any]:
    """The objective section: a known name and only that objective's own parameters."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of a name and that objective's parameters.")
    name = values.get("name", "causal")
    if name not in OBJECTIVES:
        raise ConfigError(f"{where}.name is {name!r}; choose one of {', '.join(OBJECTIVES)}.")
    allowed = objective_parameters(name)
    unknown = sorted(set(values) - {"name", *allowed})
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ConfigError(f"{where}: the {name} objective has no parameter {unknown[0]!r} (known: {known}).")
    return {"name": name, **values}


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    """A Recipe from a mapping with model, data, objective and train sections, rejecting unknown fields by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with model, data, objective and train sections.")
    unknown = sorted(set(data) - {"model", "objective", *SECTIONS})
    if unknown:
        raise ConfigError(f"{where} has no section {unknown[0]!r} (known: model, data, objective, train).")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: model must be a mapping of a preset, a size and ModelConfig fields.")
    unknown = sorted(set(model) - {"preset", "size"} - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ConfigError(f"{where}: model has no field {unknown[0]!r} (a ModelConfig field, preset or size).")
    hints = _override_fields("model", "causal")  # YAML reads 1e-4 as text: each field as its type, as data's and train's
    model = {name: coerce(value, hints[name], f"{where}: model.{name}") for name, value in model.items()}
    sections = {name: from_mapping(cls, data.get(name) or {}, f"{where}: {name}") for name, cls in SECTIONS.items()}
    objective = _objective(data.get("objective") or {}, f"{where}: objective")
    return Recipe(model=dict(model), objective=objective, **sections)


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe and apply `section.field=value` overrides."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    if data is None or data == {}:
        raise ConfigError(f"the recipe {path} is empty; give it model, data, objective and train sections.")
    if not isinstance(data, dict):
        raise ConfigError(f"the recipe {path} must be a mapping with model, data, objective and train sections.")
    objective = data.get("objective")
    objective = objective.get("name", "causal") if isinstance(objective, dict) else "causal"
    for section, values in parse_overrides(list(overrides), objective).items():
        if not isinstance(data.get(section) or {}, dict):
            raise ConfigError(f"the recipe {path}: {section} must be a mapping of fields.")
        data[section] = {**(data.get(section) or {}), **values}
    return recipe_from_dict(data, where=str(path))
