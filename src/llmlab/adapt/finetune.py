"""`llmlab finetune`: a fine-tuning recipe (model, data, method, adapter and train sections) run through the one
Trainer into DIR — checkpoints, --resume, metrics.jsonl and progress as `llmlab pretrain` — with the final model in
DIR/final (a full checkpoint with the base's tokenizer and chat template files, or the LoRA adapter alone)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmlab.adapt.data import FinetuneData, load_examples
from llmlab.adapt.method import FinetuneContext
from llmlab.adapt.templates import Encoder, load_template
from llmlab.errors import ConfigError
from llmlab.fields import coerce, from_mapping
from llmlab.files import read_yaml
from llmlab.train.loop import TrainConfig

METHODS = ("sft", "reward", "dpo", "ppo", "grpo")
# the kinds of normalised records (llmlab.adapt.data) each method trains on
METHOD_DATA = {"sft": ("sft",), "reward": ("preference",), "dpo": ("preference",), "ppo": ("prompts", "sft"),
               "grpo": ("prompts", "sft")}
ADAPTERS = ("none", "lora")
QUANTIZATIONS = ("none", "nf4")
SECTIONS = ("model", "data", "method", "adapter", "train")
# files of the base checkpoint that the fine-tuned one keeps: the chat template and the tokenizer's special tokens
CARRIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
REPORT_FILE = "finetune_report.json"


@dataclass(frozen=True)
class ModelSection:
    """The `model:` section: the checkpoint to fine-tune (llmlab or Hugging Face directory)."""

    path: str


@dataclass(frozen=True)
class AdapterConfig:
    """The `adapter:` section: none (full fine-tuning) or lora with llmlab.adapt.lora.LoraConfig's fields."""

    kind: str = "none"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target: tuple[str, ...] | None = None  # module names; None: LoraConfig's default
    use_dora: bool = False
    use_rslora: bool = False
    quantize: str = "none"  # or nf4 (QLoRA, GPU only)

    def __post_init__(self):
        if self.kind not in ADAPTERS:
            raise ConfigError(f"adapter.kind is {self.kind!r}; choose one of {', '.join(ADAPTERS)}.")
        if self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"adapter.quantize is {self.quantize!r}; choose one of {', '.join(QUANTIZATIONS)}.")

    def lora_fields(self) -> dict[str, Any]:
        """The fields LoraConfig takes (those left None fall back to its defaults)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "kind" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class FinetuneRecipe:
    """A whole fine-tuning run."""

    model: ModelSection
    data: FinetuneData
    method: dict[str, Any] = field(default_factory=lambda: method_section({}, "method"))
    adapter: AdapterConfig = AdapterConfig()
    train: TrainConfig = TrainConfig()

    @property
    def method_name(self) -> str:
        """The method's name."""
        return self.method["name"]


def method_module(name: Any):
    """The module llmlab.adapt.<name> of a known method (with PARAMETERS and build)."""
    if name not in METHODS:
        raise ConfigError(f"method.name is {name!r}; choose one of {', '.join(METHODS)}.")
    try:
        return importlib.import_module(f"llmlab.adapt.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"llmlab.adapt.{name}":
            raise
        raise ConfigError(f"the {name} method is not part of this installation of llmlab.") from None


def _parameter_hint(default: Any) -> Any:
    """The type a method parameter's value must have: its default's, when that is a plain scalar."""
    return type(default) if isinstance(default, (bool, int, float, str)) else Any


def method_section(values: Any, where: str) -> dict[str, Any]:
    """The method section: a known name and that method's PARAMETERS, defaults filled in, unknown ones refused."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of a name and that method's parameters.")
    name = values.get("name", "sft")
    parameters = method_module(name).PARAMETERS
    unknown = sorted(set(values) - {"name", *parameters}, key=str)
    if unknown:
        raise ConfigError(f"{where}: the {name} method has no parameter {unknown[0]!r} "
                          f"(known: {', '.join(parameters) or 'none'}).")
    given = {key: coerce(value, _parameter_hint(parameters[key]), f"{where}.{key}")
             for key, value in values.items() if key != "name"}
    return {"name": name, **parameters, **given}


def _section_hints(section: str, method: Any) -> dict[str, Any]:
    """The fields an override may set in a section, with their types."""
    classes = {"model": ModelSection, "data": FinetuneData, "adapter": AdapterConfig, "train": TrainConfig}
    if section in classes:
        hints = typing.get_type_hints(classes[section])
        return {f.name: hints[f.name] for f in dataclasses.fields(classes[section]) if f.init}
    parameters = method_module(method).PARAMETERS
    return {"name": str, **{key: _parameter_hint(default) for key, default in parameters.items()}}


def parse_overrides(overrides: list[str], method: Any = "sft") -> dict[str, dict[str, Any]]:
    """`section.field=value` strings as {section: {field: value}}, each field known and read as its type."""
    from llmlab.train.recipe import override_value

    for override in overrides:
        if override.startswith("method.name="):
            method = override.partition("=")[2]
    parsed: dict[str, dict[str, Any]] = {}
    for override in overrides:
        key, separator, text = override.partition("=")
        section, dot, name = key.partition(".")
        if not separator or not dot or section not in SECTIONS or not name:
            raise ConfigError(f"the override {override!r} is not of the form {'|'.join(SECTIONS)}.FIELD=VALUE.")
        hints = _section_hints(section, method)
        if name not in hints:
            raise ConfigError(f"the override {override!r} names no field of {section} (known: {', '.join(hints)}).")
        parsed.setdefault(section, {})[name] = override_value(text, hints[name])
    return parsed


def recipe_from_dict(values: Any, where: str = "recipe") -> FinetuneRecipe:
    """A FinetuneRecipe from a mapping of its sections, unknown sections and fields refused by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping with {', '.join(SECTIONS)} sections.")
    unknown = sorted(set(values) - set(SECTIONS), key=str)
    if unknown:
        raise ConfigError(f"{where} has no section {unknown[0]!r} (known: {', '.join(SECTIONS)}).")
    if not values.get("model"):
        raise ConfigError(f"{where} needs a model section with the path of the checkpoint to fine-tune.")
    if not values.get("data"):
        raise ConfigError(f"{where} needs a data section with data.path or data.sources.")
    sections = {name: from_mapping(cls, values.get(name) or {}, f"{where}: {name}") for name, cls in
                (("model", ModelSection), ("data", FinetuneData), ("adapter", AdapterConfig), ("train", TrainConfig))}
    return FinetuneRecipe(method=method_section(values.get("method") or {}, f"{where}: method"), **sections)


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> FinetuneRecipe:
    """Read a YAML fine-tuning recipe and apply `section.field=value` overrides."""
    path = Path(path)
    values = read_yaml(path, "recipe")
    if not values:
        raise ConfigError(f"the recipe {path} is empty; give it {', '.join(SECTIONS)} sections.")
    if not isinstance(values, dict):
        raise ConfigError(f"the recipe {path} must be a mapping with {', '.join(SECTIONS)} sections.")
    method = values.get("method")
    method = method.get("name", "sft") if isinstance(method, dict) else "sft"
    for section, changes in parse_overrides(list(overrides), method).items():
        if not isinstance(values.get(section) or {}, dict):
            raise ConfigError(f"the recipe {path}: {section} must be a mapping of fields.")
        values[section] = {**(values.get(section) or {}), **changes}
    return recipe_from_dict(values, where=str(path))


def answer_sampler(encoder: Encoder, prompt, max_new_tokens: int) -> Callable:
    """A function of a model giving the prompt's text and the model's greedy reply to it."""

    def sample(model) -> str:
        ids = torch.tensor([encoder.encode_prompt(prompt)], device=next(model.parameters()).device)
        new = model.generate(ids, max_new_tokens=max_new_tokens)[0, ids.shape[1]:].tolist()
        return f"{encoder.template.render(prompt)!r} -> {encoder.tokenizer.decode(new)!r}"

    return sample


def save_final(model, final: Path, base: Path, step: int, extra_state: dict | None, extra_state_file: str,
               adapter: bool) -> Path:
    """Write DIR/final: the adapter alone (LoRA), or the whole model with the base's tokenizer and chat template
    files, and the method's extra tensors (a reward or value head) beside it in extra_state_file."""
    from safetensors.torch import save_file

    from llmlab.data.shards import atomic_path
    from llmlab.model.checkpoint import GENERATION_CONFIG_FILE, TOKENIZER_FILE
    from llmlab.train import distributed
    from llmlab.train.checkpoint import save_model

    if adapter:
        from llmlab.adapt.lora import save_adapter

        if distributed.is_main():  # every rank holds the same adapter; one writes the run's own final/ (replaced)
            save_adapter(model, final, base=str(base), overwrite=True)
        distributed.barrier()
    else:
        tokenizer = base / TOKENIZER_FILE
        save_model(model, final, tokenizer if tokenizer.exists() else None, {"step": step, "base": str(base)},
                   overwrite=True)
    if not distributed.is_main():
        return final
    for name in CARRIED_FILES:
        if (base / name).is_file() and not adapter:
            with atomic_path(final / name) as staging:
                shutil.copyfile(base / name, staging)
    generation = getattr(model, "generation_config", None)
    if generation is not None and not adapter:
        with atomic_path(final / GENERATION_CONFIG_FILE) as staging:
            staging.write_text(json.dumps(generation.to_hf(), indent=2))
    if extra_state:
        with atomic_path(final / extra_state_file) as staging:
            save_file({key: value.detach().contiguous().cpu() for key, value in extra_state.items()}, staging)
    return final


def finetune(recipe: FinetuneRecipe, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True,
             on_step: Callable[[int, float], None] | None = None) -> Path:
    """Fine-tune the recipe's model into out_dir (checkpoints/step-N, metrics.jsonl, final/); return final/.

    With resume, training continues from the newest complete checkpoint; without, out_dir must not hold a run.
    """
    import llmlab
    from llmlab.infer.chat import require_tokenizer
    from llmlab.infer.config import GenerationConfig
    from llmlab.train.loop import Trainer
    from llmlab.train.pretrain import (FINAL_DIRECTORY, check_run_directory, deterministic_algorithms,
                                       resume_trainer, say_replacing_final)

    run_dir, name = Path(out_dir), recipe.method_name
    latest = check_run_directory(run_dir, resume, recipe.train.steps)
    module = method_module(name)
    kind, examples, held_out = load_examples(recipe.data)
    if kind not in METHOD_DATA[name]:
        raise ConfigError(f"the {name} method cannot train on {kind} records; give it "
                          f"{' or '.join(METHOD_DATA[name])} data.")
    if recipe.data.pretraining_ratio and name != "sft":
        raise ConfigError(f"data.pretraining_ratio mixes plain text into sft only, not into {name}.")
    if recipe.adapter.kind == "lora" and recipe.train.parallel == "fsdp":
        raise ConfigError("a LoRA adapter trains under train.parallel=ddp (its weights are small enough to copy to "
                          "every rank), not fsdp.")
    base = Path(recipe.model.path)
    device = torch.device(recipe.train.resolved_device())
    model = llmlab.load(base, device=device)
    tokenizer = require_tokenizer(model, base)
    config = model.config
    encoder = Encoder(tokenizer, load_template(recipe.data.template, tokenizer, config.eos_token_id, base),
                      config.eos_token_id, config.bos_token_id)
    for record in examples[:1] + held_out[:1]:
        if "prompt" in record:
            encoder.encode_prompt(record["prompt"])  # a template missing a field fails here, before training
    if encoder.end_of_turn_id != config.eos_token_id:  # generation stops at the end of a turn as at EOS
        model.generation_config = (model.generation_config or GenerationConfig()).replace(
            eos_token_id=(config.eos_token_id, encoder.end_of_turn_id))
    adapter_disabled = None
    if recipe.adapter.kind == "lora":
        from llmlab.adapt import lora

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(recipe.train.seed)  # the adapter's initialisation: a function of train.seed alone
            wrapped = lora.apply_lora(model, lora.LoraConfig(**recipe.adapter.lora_fields()))
        print(f"LoRA wrapped {wrapped} modules")
        adapter_disabled = lambda: lora.disabled(model)  # noqa: E731
    params = {key: value for key, value in recipe.method.items() if key != "name"}
    context = FinetuneContext(model=model, tokenizer=tokenizer, params=params, examples=examples, held_out=held_out,
                              encode=encoder.encode, encode_prompt=encoder.encode_prompt, train=recipe.train,
                              run_dir=run_dir, device=device, seed=recipe.train.seed,
                              adapter_disabled=adapter_disabled, model_directory=base)
    parts = module.build(context)
    for note in parts.notes:
        print(note)
    trained = parts.model if parts.model is not None else model
    sample_from = (held_out or examples)[0].get("prompt")
    sampler = None
    if sample_from is not None and config.arch != "encoder":
        sample = answer_sampler(encoder, sample_from, recipe.train.sample_tokens)
        sampler = lambda trained: sample(model)  # noqa: E731  (the language model inside a reward or value head)
    tokenizer_file = base / "tokenizer.json"
    trainer = Trainer(trained, recipe.train, parts.batches, held_out=parts.held_out, run_dir=run_dir,
                      progress=progress, description=f"finetune {name}", sampler=sampler, on_step=on_step,
                      tokenizer_file=tokenizer_file if tokenizer_file.exists() else None, loss_fn=parts.loss_fn)
    resume_trainer(trainer, latest, resume, run_dir)
    with deterministic_algorithms(recipe.train.deterministic):
        trainer.fit()
    final = run_dir / FINAL_DIRECTORY
    say_replacing_final(final, trainer.step)
    save_final(model, final, base, trainer.step, parts.extra_state() if parts.extra_state else None,
               parts.extra_state_file, recipe.adapter.kind == "lora")
    if parts.evaluate is not None:
        from llmlab.train.runs import write_text

        metrics = parts.evaluate(trained)
        write_text(run_dir / REPORT_FILE, json.dumps({"step": trainer.step, **metrics}, indent=2))
        print(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    return final
