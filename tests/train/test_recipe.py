from pathlib import Path

import pytest

from llmlab import demo
from llmlab.errors import ConfigError
from llmlab.train.recipe import load_recipe

RECIPES = Path(__file__).parents[2] / "recipes"


def test_tiny_recipe_reads_into_dataclasses():
    recipe = load_recipe(RECIPES / "tiny.yaml")
    assert recipe.model["preset"] == "llama"
    assert recipe.data.source == "bundled"
    assert recipe.train.lr == 2.0e-3 and recipe.train.deterministic is True
    assert recipe.model_config(vocab_size=recipe.data.vocab_size).n_layers == 4

def test_overrides_replace_fields_with_the_field_types():
    overrides = ["train.lr=1e-3", "train.steps=7", "train.betas=[0.9, 0.99]", "train.grad_clip=null",
                 "data.seq_len=32", "model.n_layers=2"]
    recipe = load_recipe(RECIPES / "tiny.yaml", overrides)
    assert recipe.train.lr == 0.001 and isinstance(recipe.train.lr, float)
    assert recipe.train.steps == 7
    assert recipe.train.betas == (0.9, 0.99)
    assert recipe.train.grad_clip is None
    assert recipe.data.seq_len == 32
    assert recipe.model_config(vocab_size=2048).n_layers == 2


def test_demo_recipe_file_is_the_demo_run():
    assert load_recipe(RECIPES / "demo.yaml") == demo.RECIPE


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.learning_rate=0.1"], "learning_rate"),
        (["data.shards=x"], "shards"),
        (["model.widht=3"], "widht"),
        (["optim.lr=3"], "optim.lr=3"),
        (["steps=3"], "steps=3"),
        (["train.steps=many"], "train.steps"),
        (["train.optimizer=sgd"], "train.optimizer"),
    ],
)
def test_unknown_or_bad_fields_are_named(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_recipe(RECIPES / "tiny.yaml", overrides)


def test_an_unknown_section_in_the_file_is_named(tmp_path):
    (tmp_path / "r.yaml").write_text("model: {preset: llama, size: tiny}\noptimizer: {lr: 1}\n")
    with pytest.raises(ConfigError, match="optimizer"):
        load_recipe(tmp_path / "r.yaml")


def test_a_missing_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nothing.yaml"):
        load_recipe(tmp_path / "nothing.yaml")
