"""The trainer on a CUDA GPU: mixed precision, fused AdamW, torch.compile, activation checkpointing, checkpoints."""

import pytest
import torch

from llmlab.model import presets
from llmlab.model.transformer import Model
from llmlab.train.checkpoint import latest_checkpoint, load_checkpoint
from llmlab.data.mixture import Mixture, MixtureSource
from llmlab.data.shards import TokenArray
from llmlab.objectives import causal_lm
from llmlab.train.data import StepBatches
from llmlab.train.loop import CHECKPOINTS_DIRECTORY, TrainConfig, Trainer

pytestmark = pytest.mark.gpu
TOKENS = (torch.arange(20000) * 7) % 256  # a learnable cycle: the next token follows from the current one


def make_trainer(run_dir=None, **settings):
    torch.manual_seed(0)
    model = Model(presets.llama("tiny")).cuda()
    config = TrainConfig(**{"steps": 60, "lr": 3e-3, "warmup": 5, **settings})
    return Trainer(model, config, StepBatches(Mixture([MixtureSource(TokenArray(TOKENS))], 64, seed=0), causal_lm, 8, seed=0), run_dir=run_dir, progress=False)


@pytest.mark.parametrize(
    ("precision", "compile", "checkpointing"), [("bf16", False, True), ("fp16", False, False), ("bf16", True, False)]
)
def test_mixed_precision_training_learns_on_the_gpu(precision, compile, checkpointing):
    trainer = make_trainer(precision=precision, compile=compile, activation_checkpointing=checkpointing)
    losses = trainer.fit()
    assert trainer.optimizer.defaults.get("fused") is True
    assert sum(losses[-5:]) / 5 < losses[0] - 2.0
    assert trainer.skipped == {"non-finite": 0, "spike": 0}


def test_a_gpu_run_resumes_from_its_checkpoint(tmp_path):
    whole = make_trainer(steps=8)
    whole.fit()
    first = make_trainer(tmp_path, steps=8, checkpoint_every=4)
    first.on_step = lambda step, loss: (_ for _ in ()).throw(InterruptedError) if step == 5 else None
    with pytest.raises(InterruptedError):
        first.fit()
    resumed = make_trainer(tmp_path, steps=8)
    resumed.load_state_dict(load_checkpoint(latest_checkpoint(tmp_path / CHECKPOINTS_DIRECTORY), resumed.model))
    resumed.fit()
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=1e-6)
