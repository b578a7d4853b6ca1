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
        (["data.repeated_fraction=1.0"], "data.repeated_fraction"),
        (["data.repeated_windows=0"], "data.repeated_windows"),
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


def test_the_objective_section_takes_a_name_and_that_objectives_parameters(tmp_path):
    recipe = load_recipe(RECIPES / "tiny.yaml", ["objective.name=span_corruption", "objective.noise_density=0.3"])
    assert recipe.objective == {"name": "span_corruption", "noise_density": 0.3}
    assert recipe.objective_name == "span_corruption" and load_recipe(RECIPES / "tiny.yaml").objective_name == "causal"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["objective.name=bogus"], "bogus"),
        (["objective.name=mlm", "objective.noise_density=0.3"], "noise_density"),
        (["objective.name=span_corruption", "objective.eos_token_id=3"], "eos_token_id"),  # from the tokenizer
        (["objective.prefix_length=3"], "prefix_length"),  # causal takes no parameters
    ],
)
def test_unknown_objectives_and_parameters_are_named(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_recipe(RECIPES / "tiny.yaml", overrides)


def test_data_sources_read_as_shard_sources_with_weights_or_epochs(tmp_path):
    (tmp_path / "r.yaml").write_text("data:\n  source: null\n  sources:\n    - {path: a, weight: 2}\n"
                                     "    - {path: b, epochs: 1}\n")
    sources = load_recipe(tmp_path / "r.yaml").data.sources
    assert [(s.path, s.weight, s.epochs) for s in sources] == [("a", 2.0, None), ("b", None, 1.0)]
    for text, named in (("{sources: [{path: a}]}", "data.source"), ("{source: null, sources: [{weight: 1}]}", "path"),
                        ("{source: null, sources: [{path: a, share: 1}]}", "share")):
        (tmp_path / "r.yaml").write_text(f"data: {text}\n")
        with pytest.raises(ConfigError, match=named):
            load_recipe(tmp_path / "r.yaml")


def test_a_text_field_override_takes_the_text_as_it_is():
    overrides = ["train.sample_prompt=ROMEO:", "train.device=cpu", "data.source=null"]
    recipe = load_recipe(RECIPES / "tiny.yaml", [*overrides, "data.sources=[{path: a}]"])
    assert recipe.train.sample_prompt == "ROMEO:" and recipe.train.device == "cpu" and recipe.data.source is None
    for prompt in ("[1, 2", "yes", "3", "null", "a: b: c", "  spaced "):
        assert load_recipe(RECIPES / "tiny.yaml", [f"train.sample_prompt={prompt}"]).train.sample_prompt == prompt
    assert load_recipe(RECIPES / "tiny.yaml", ["data.source=shards: v2"]).data.source == "shards: v2"


def test_an_empty_recipe_is_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("# to be written\n")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_recipe(tmp_path / "empty.yaml")


def test_model_fields_take_their_types_as_data_and_train_fields_do(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: {preset: llama, size: tiny, norm_eps: 1e-4}\n")  # YAML 1.1 reads 1e-4 as a string
    recipe = load_recipe(path, ["model.dropout=1e-1"])
    assert recipe.model["norm_eps"] == 1e-4 and recipe.model["dropout"] == 0.1
    assert recipe.model_config(vocab_size=64).norm_eps == 1e-4
    with pytest.raises(ConfigError, match="model.norm_eps"):
        load_recipe(path, ["model.norm_eps=small"])
