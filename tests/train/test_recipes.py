"""The full-size pretraining recipes: each loads, builds at the size its comment states, pairs an objective with an
architecture that can train on it, and runs two steps when shrunk to a toy on the bundled corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.model.checkpoint import read_llmlab_config
from llmlab.model.transformer import Model
from llmlab.train.pretrain import check_objective_fits, pretrain
from llmlab.train.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# recipe → (architecture, objective), from the papers each recipe cites
EXPECTED = {
    "gpt2-124m": ("decoder", "causal"),
    "llama-400m": ("decoder", "causal"),
    "t5-small": ("encoder_decoder", "span_corruption"),
    "ul2-small": ("encoder_decoder", "ul2"),
    "glm-small": ("prefix_decoder", "glm"),
    "bert-small": ("encoder", "mlm"),
}
# A toy of each recipe's architecture and objective: the bundled corpus, 32-token windows, two fp32 CPU steps.
TOY = [
    "model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.head_dim=16", "model.d_ff=128",
    "model.max_seq_len=128", "data.source=bundled", "data.max_chars=30000", "data.vocab_size=400", "data.seq_len=32",
    "data.batch_size=2", "data.held_out_fraction=0.1", "train.steps=2", "train.grad_accum=1", "train.warmup=1",
    "train.precision=fp32", "train.compile=false", "train.device=cpu", "train.eval_every=0", "train.sample_every=0",
    "train.checkpoint_every=0", "train.log_every=1",
]


def stated_parameters(path: Path) -> int:
    """The parameter count a recipe's comment states ("124,439,808 parameters")."""
    match = re.search(r"([\d,]{6,}) parameters", path.read_text())
    assert match, f"{path.name} states no parameter count"
    return int(match.group(1).replace(",", ""))


def test_every_recipe_is_tested():
    assert {path.stem for path in RECIPES.glob("*.yaml")} >= set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_builds_at_its_stated_size_with_a_fitting_objective(name):
    path = RECIPES / f"{name}.yaml"
    recipe = load_recipe(path)
    config = recipe.model_config()
    with torch.device("meta"):
        model = Model(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert abs(parameters - stated_parameters(path)) <= 0.01 * stated_parameters(path)
    arch, objective = EXPECTED[name]
    assert (config.arch, recipe.objective_name) == (arch, objective)
    check_objective_fits(recipe.objective_name, recipe.objective, config)
    assert recipe.data.source != "bundled" and not recipe.data.source.endswith((".npy", ".bin"))  # a shard directory
    assert config.max_seq_len >= min(recipe.data.seq_len, 512)


def transformers_model(name: str):
    """transformers' own model of the published config a recipe reproduces, on the meta device."""
    transformers = pytest.importorskip("transformers")
    if name == "t5-small":
        config = transformers.T5Config(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64)
        return transformers.T5ForConditionalGeneration(config)
    if name == "gpt2-124m":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config())
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                                      num_attention_heads=16, max_position_embeddings=2048, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("name", ["gpt2-124m", "llama-400m", "t5-small"])
def test_recipe_sizes_match_transformers(name):
    """The recipe's model has exactly as many parameters as transformers' model of the same published shape."""
    with torch.device("meta"):
        theirs = transformers_model(name)
        ours = Model(load_recipe(RECIPES / f"{name}.yaml").model_config())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(("name", "objective"), [("t5-small", "mlm"), ("bert-small", "span_corruption"),
                                                 ("gpt2-124m", "glm")])
def test_an_objective_the_architecture_cannot_train_is_refused(name, objective):
    config = load_recipe(RECIPES / f"{name}.yaml").model_config()
    with pytest.raises(ConfigError, match=objective):
        check_objective_fits(objective, {}, config)


@pytest.mark.parametrize("name", EXPECTED)
def test_recipe_trains_two_steps_as_a_toy(name, tmp_path):
    recipe = load_recipe(RECIPES / f"{name}.yaml", TOY)
    final = pretrain(recipe, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    config, metadata = read_llmlab_config(final)
    assert (config.arch, config.n_layers, config.d_model, metadata["step"]) == (EXPECTED[name][0], 2, 64, 2)
