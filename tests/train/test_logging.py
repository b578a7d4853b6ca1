"""What a run shows while it trains: metrics.jsonl, TensorBoard's event file, the held-out loss on the console."""

import json

import pytest
import torch

from llmlab.train.loop import METRICS_FILE, TENSORBOARD_DIRECTORY, TrainConfig, Trainer
from tests.train.test_loop import BigramModel, Windows

VOCAB = 11


def tiny_trainer(tmp_path, **config) -> Trainer:
    """A bigram model on a repeating stream, with held-out batches, logging every step to tmp_path."""
    torch.manual_seed(0)
    tokens = torch.arange(400) % VOCAB
    held_out = [next(Windows(tokens, 2, 8, seed=9)) for _ in range(2)]
    settings = dict(steps=6, lr=1e-2, log_every=1, eval_every=3, **config)
    return Trainer(BigramModel(VOCAB), TrainConfig(**settings), Windows(tokens, 4, 8), held_out=held_out,
                   run_dir=tmp_path, progress=True)


def test_tensorboard_event_file_holds_the_metrics(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tiny_trainer(tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    board = event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD_DIRECTORY))
    board.Reload()
    for name in ("loss", "lr", "tokens_per_s", "eval_loss"):
        logged = [record for record in records if name in record]
        events = board.Scalars(name)
        assert [event.step for event in events] == [record["step"] for record in logged]
        assert [event.value for event in events] == pytest.approx([record[name] for record in logged], rel=1e-6)
    assert [event.step for event in board.Scalars("eval_loss")] == [3, 6]


def test_the_held_out_loss_is_printed_when_computed(tmp_path, capsys):
    trainer = tiny_trainer(tmp_path)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    console = capsys.readouterr()
    printed = [line for line in console.out.splitlines() if "eval loss" in line]
    evaluations = [record for record in records if "eval_loss" in record]
    assert printed == [f"step {record['step']}: eval loss {record['eval_loss']:.3f}" for record in evaluations]
    assert f"eval_loss={evaluations[-1]['eval_loss']:.3f}" in console.err.split("\r")[-1]  # the bar's last state


def test_no_progress_prints_nothing(tmp_path, capsys):
    trainer = tiny_trainer(tmp_path)
    trainer.progress = False
    trainer.fit()
    assert capsys.readouterr().out == ""
