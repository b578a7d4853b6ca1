import math

import pytest

import llmlab
from llmlab import demo
from llmlab.data.tokenizer import load_tokenizer


def test_demo_trains_samples_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    losses = demo.run(steps=3, out_dir=str(tmp_path / "demo"))
    assert len(losses) == 3
    assert losses[0] == pytest.approx(math.log(demo.VOCAB_SIZE), abs=0.5)
    output = capsys.readouterr().out
    assert output.count("  > ") == 2 * len(demo.PROMPTS)
    model = llmlab.load(tmp_path / "demo")
    assert model.config.vocab_size == load_tokenizer(tmp_path / "demo").get_vocab_size() == demo.VOCAB_SIZE
