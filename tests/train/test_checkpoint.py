import errno

import pytest
import torch

import llmlab
import llmlab.model.checkpoint
import llmlab.train.distributed
from llmlab.errors import CheckpointError
from llmlab.model import presets
from llmlab.model.transformer import Model
from llmlab.train.checkpoint import (
    SHARDED_DIRECTORY, STATE_FILE, checkpoint_steps, latest_checkpoint, load_checkpoint, save_sharded_checkpoint,
)  # fmt: skip
from llmlab.train.loop import CHECKPOINTS_DIRECTORY, TrainConfig, Trainer
from tests.train.test_loop import Windows

CONFIG = presets.llama("tiny", n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64, dropout=0.1)
TOKENS = (torch.arange(2000) * 7) % 64


def make_trainer(run_dir, steps, checkpoint_every=0, keep_last=3):
    """A fresh model and trainer, as a new process would build them."""
    torch.manual_seed(0)
    model = Model(CONFIG)
    train = TrainConfig(steps=steps, lr=3e-3, warmup=2, checkpoint_every=checkpoint_every, keep_last=keep_last,
                        spike_factor=3.0, seed=5)  # fmt: skip
    return Trainer(model, train, Windows(TOKENS, 4, 16, seed=1), run_dir=run_dir, progress=False)


def test_resuming_from_a_checkpoint_gives_bit_identical_weights(tmp_path):
    whole = make_trainer(tmp_path / "whole", steps=6)
    whole.fit()
    def die_after_step_4(step, loss):
        if step == 3:
            raise InterruptedError("killed")

    first = make_trainer(tmp_path / "split", steps=6, checkpoint_every=3)
    first.on_step = die_after_step_4
    with pytest.raises(InterruptedError):
        first.fit()
    resumed = make_trainer(tmp_path / "split", steps=6)
    latest = latest_checkpoint(tmp_path / "split" / CHECKPOINTS_DIRECTORY)
    resumed.load_state_dict(load_checkpoint(latest, resumed.model))
    resumed.fit()
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    make_trainer(tmp_path, steps=8, checkpoint_every=2, keep_last=2).fit()
    assert [step for step, _ in checkpoint_steps(tmp_path / CHECKPOINTS_DIRECTORY)] == [6, 8]
    assert sorted(path.name for path in (tmp_path / CHECKPOINTS_DIRECTORY).iterdir()) == ["step-6", "step-8"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=4, checkpoint_every=2)
    trainer.config = TrainConfig(**{**trainer.config.__dict__, "steps": 2})
    trainer.fit()
    previous = tmp_path / CHECKPOINTS_DIRECTORY / "step-2"
    before = {path.name: path.read_bytes() for path in previous.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llmlab.model.checkpoint, "save_file", disk_full)
    trainer.config = TrainConfig(**{**trainer.config.__dict__, "steps": 4})
    with pytest.raises(CheckpointError, match="No space left on device"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / CHECKPOINTS_DIRECTORY) == previous
    assert sorted(path.name for path in (tmp_path / CHECKPOINTS_DIRECTORY).iterdir()) == ["step-2"]  # no debris
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == before
    monkeypatch.undo()
    assert llmlab.load(previous).config == CONFIG
    assert load_checkpoint(previous, Model(CONFIG))["step"] == 2


@pytest.fixture
def checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, steps=2, checkpoint_every=2)
    trainer.fit()
    return latest_checkpoint(tmp_path / CHECKPOINTS_DIRECTORY)


def test_a_checkpoint_of_another_architecture_is_refused(checkpoint):
    with pytest.raises(CheckpointError, match="another architecture.*n_layers"):
        load_checkpoint(checkpoint, Model(CONFIG.replace(n_layers=3)))


@pytest.mark.parametrize("file", ["model.safetensors", STATE_FILE])
def test_a_truncated_checkpoint_is_refused(checkpoint, file):
    path = checkpoint / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=file):
        load_checkpoint(checkpoint, Model(CONFIG))


def test_a_corrupt_training_state_is_refused(checkpoint):
    (checkpoint / STATE_FILE).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=STATE_FILE):
        load_checkpoint(checkpoint, Model(CONFIG))


class PoisonedBatches(Windows):
    """Random windows whose draw number `poisoned` (0-based) has every label ignored: a NaN loss."""

    def __init__(self, poisoned, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.poisoned = poisoned

    def __next__(self):
        batch = super().__next__()
        if self.drawn - 1 == self.poisoned:
            batch = {**batch, "labels": torch.full_like(batch["labels"], -100)}
        return batch


def test_a_bad_step_rolls_back_to_the_last_checkpoint_and_skips_its_batches(tmp_path):
    trainer = make_trainer(tmp_path, steps=6, checkpoint_every=3)
    trainer.batches = PoisonedBatches(4, TOKENS, 4, 16, seed=1)
    trainer.config = TrainConfig(**{**trainer.config.__dict__, "on_spike": "rollback"})
    steps_seen, weights_after = [], {}

    def watch(step, loss):
        steps_seen.append(step)
        if step == 4 and not weights_after:  # the poisoned step: back to the weights of step 3
            weights_after.update({name: tensor.clone() for name, tensor in trainer.model.state_dict().items()})

    trainer.on_step = watch
    trainer.fit()
    assert steps_seen == [0, 1, 2, 3, 4, 3, 4, 5]  # steps 4 and 5 again after the rollback to step 3
    assert trainer.rollbacks == 1 and trainer.skipped["non-finite"] == 1
    assert trainer.batches.drawn == 8  # the poisoned batch and the one before it are never drawn again
    checkpoint = llmlab.load(tmp_path / CHECKPOINTS_DIRECTORY / "step-3").state_dict()
    for name, tensor in checkpoint.items():
        assert torch.equal(weights_after[name], tensor), name


def save_sharded(trainer, directory, keep_last=0):
    """The checkpoint a distributed run writes, here from one process (its collectives are then no-ops)."""
    return save_sharded_checkpoint(directory, trainer.step, trainer.model, trainer.optimizer, trainer.state_dict(),
                                   keep_last=keep_last)  # fmt: skip


def test_a_failed_sharded_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    trainer = make_trainer(None, steps=2)
    trainer.fit()
    directory = tmp_path / CHECKPOINTS_DIRECTORY
    previous = save_sharded(trainer, directory)
    before = {str(path): path.read_bytes() for path in previous.rglob("*") if path.is_file()}

    def disk_full(path, model, optimizer):
        path.mkdir(parents=True)
        (path / "__0_0.distcp").write_bytes(b"\0" * 100)  # part of a shard, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llmlab.train.distributed, "save_sharded", disk_full)
    trainer.step = 4
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_sharded(trainer, directory)
    assert latest_checkpoint(directory) == previous
    assert sorted(path.name for path in directory.iterdir()) == ["step-2"]  # no debris
    assert {str(path): path.read_bytes() for path in previous.rglob("*") if path.is_file()} == before


def test_a_sharded_checkpoint_missing_a_shard_is_refused(tmp_path):
    trainer = make_trainer(None, steps=1)
    trainer.fit()
    path = save_sharded(trainer, tmp_path)
    for shard in (path / SHARDED_DIRECTORY).glob("*.distcp"):
        shard.unlink()
    with pytest.raises(CheckpointError, match=SHARDED_DIRECTORY):
        load_checkpoint(path, Model(CONFIG))


def test_sharded_checkpoints_keep_the_newest(tmp_path):
    trainer = make_trainer(None, steps=3)
    for step in (1, 2, 3):
        trainer.config = TrainConfig(**{**trainer.config.__dict__, "steps": step})
        trainer.fit()
        save_sharded(trainer, tmp_path, keep_last=2)
    assert [step for step, _ in checkpoint_steps(tmp_path)] == [2, 3]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-2", "step-3"]


def _with_value_head(model):
    from llmlab.adapt.ppo import PolicyWithValue

    return PolicyWithValue(model)


def _lora_adapted(model):
    from llmlab.adapt.lora import LoraConfig, apply_lora

    apply_lora(model, LoraConfig(r=2, target=("attention", "mlp")))
    return model


@pytest.mark.parametrize("wrap", [_with_value_head, _lora_adapted], ids=["value-head", "lora"])
def test_a_wrapped_or_adapted_model_resumes_bit_for_bit(tmp_path, wrap):
    def trainer(run_dir, checkpoint_every=0):
        torch.manual_seed(0)
        module = wrap(Model(CONFIG))
        config = TrainConfig(steps=6, lr=3e-3, warmup=2, checkpoint_every=checkpoint_every, seed=5)
        return Trainer(module, config, Windows(TOKENS, 4, 16, seed=1), run_dir=run_dir, progress=False,
                       loss_fn=lambda model, batch: _lm_loss(model, batch))

    whole = trainer(tmp_path / "whole")
    whole.fit()
    first = trainer(tmp_path / "split", checkpoint_every=3)
    first.on_step = lambda step, loss: (_ for _ in ()).throw(InterruptedError()) if step == 3 else None
    with pytest.raises(InterruptedError):
        first.fit()
    resumed = trainer(tmp_path / "split")
    resumed.resume(latest_checkpoint(tmp_path / "split" / CHECKPOINTS_DIRECTORY))
    resumed.fit()
    assert set(resumed.model.state_dict()) == set(whole.model.state_dict())
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="heads or adapter"):  # into a plain model: refused in a sentence
        load_checkpoint(latest_checkpoint(tmp_path / "split" / CHECKPOINTS_DIRECTORY), Model(CONFIG))


def _lm_loss(model, batch):
    from llmlab.objectives.losses import language_model_terms

    core = getattr(model, "policy", model)
    logits = core(batch["input_ids"]).logits
    summed, count = language_model_terms("decoder", logits, batch["labels"])
    if hasattr(model, "value_head"):  # train the head too, so that its tensors must resume
        summed = summed + model.value_head(torch.ones(CONFIG.d_model)).sum() * 1e-2
    return summed, count, {}
