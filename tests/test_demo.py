import json
import math
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab import demo
from llmlab.cli.main import main
from llmlab.data.pipeline_recipe import load_pipeline_recipe
from llmlab.data.tokenizer import load_tokenizer
from llmlab.model import Model


def test_demo_trains_samples_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    losses = demo.run(steps=3, out_dir=str(tmp_path / "demo"), sft_steps=2)
    assert len(losses) == 3
    assert losses[0] == pytest.approx(math.log(demo.VOCAB_SIZE), abs=0.5)
    output = capsys.readouterr().out
    assert output.count("  > ") == 2 * len(demo.PROMPTS) + 2 * 4  # samples, then 4 answers before and after SFT
    assert "| demo-sft (instruction-tuned) | 40 synthetic instructions | exact match |" in output
    tuned = tmp_path / "demo-sft" / "run" / "final"
    assert llmlab.load(tuned).config == llmlab.load(tmp_path / "demo").config
    model = llmlab.load(tmp_path / "demo")
    assert model.config.vocab_size == load_tokenizer(tmp_path / "demo").get_vocab_size() == demo.VOCAB_SIZE
    report = json.loads((tmp_path / "demo-data" / "report.json").read_text())
    assert "# Data pipeline report" in output and report["tokens"] > 0
    assert report["stages"][-1]["out"] == report["documents"] < report["stages"][0]["out"]
    curves = tmp_path / "demo-run" / "curves.png"
    assert f"training curves to {curves}" in output and curves.stat().st_size > 0
    assert [json.loads(line)["step"] for line in (tmp_path / "demo-run" / "metrics.jsonl").open()] == [3]
    notes = tmp_path / "demo" / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(llmlab.CheckpointError, match="not empty"):  # refused before the pipeline runs again
        demo.run(steps=1, out_dir=str(tmp_path / "demo"), sft_steps=1)
    demo.run(steps=1, out_dir=str(tmp_path / "demo"), overwrite=True, sft_steps=1)
    assert notes.read_text() == "mine" and llmlab.load(tmp_path / "demo").tokenizer is not None


def test_the_demo_runs_the_data_recipe_in_recipes():
    recipe = load_pipeline_recipe(Path(__file__).parents[1] / "recipes" / "data" / "demo.yaml")
    assert recipe == demo.DATA_RECIPE


def test_the_demo_model_exports_to_transformers_llama(tmp_path):
    transformers = pytest.importorskip("transformers")
    # the demo's recipe at a toy width: the same preset, family and options as the demo model
    config = demo.RECIPE.model_config(vocab_size=97, d_model=64, n_layers=2, d_ff=96, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=1)
    assert config.family == "llama" and config.tie_embeddings
    torch.manual_seed(0)
    model = Model(config).eval()
    llmlab.save(model, tmp_path / "demo")
    assert main(["convert", str(tmp_path / "demo"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
