import json
import math
from pathlib import Path

import pytest

import llmlab
from llmlab import demo
from llmlab.data.pipeline_recipe import load_pipeline_recipe
from llmlab.data.tokenizer import load_tokenizer


def test_demo_trains_samples_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    losses = demo.run(steps=3, out_dir=str(tmp_path / "demo"))
    assert len(losses) == 3
    assert losses[0] == pytest.approx(math.log(demo.VOCAB_SIZE), abs=0.5)
    output = capsys.readouterr().out
    assert output.count("  > ") == 2 * len(demo.PROMPTS)
    model = llmlab.load(tmp_path / "demo")
    assert model.config.vocab_size == load_tokenizer(tmp_path / "demo").get_vocab_size() == demo.VOCAB_SIZE
    report = json.loads((tmp_path / "demo-data" / "report.json").read_text())
    assert "# Data pipeline report" in output and report["tokens"] > 0
    assert report["stages"][-1]["out"] == report["documents"] < report["stages"][0]["out"]


def test_the_demo_runs_the_data_recipe_in_recipes():
    recipe = load_pipeline_recipe(Path(__file__).parents[1] / "recipes" / "data" / "demo.yaml")
    assert recipe == demo.DATA_RECIPE
