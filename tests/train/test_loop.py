import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmlab.data.packing import random_batches, sample_batch
from llmlab.errors import DataError
from llmlab.train.loop import train
from llmlab.train.schedules import warmup_cosine


class BigramModel(nn.Module):
    """A stand-in language model: next-token logits from the current token only."""

    def __init__(self, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 16)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(16, vocab_size)

    def forward(self, input_ids, labels):
        logits = self.head(self.dropout(self.embedding(input_ids)))
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return SimpleNamespace(logits=logits, loss=loss)


class LinearLoss(nn.Module):
    """loss = sum(w): a constant gradient, so every Adam step moves each weight by exactly the learning rate."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))

    def forward(self, input_ids, labels):
        return SimpleNamespace(loss=self.weight.sum())


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 10),
        (4, 5 / 10),
        (9, 1.0),
        (10, 1.0),
        (60, 0.1 + 0.9 * 0.5),
        (85, 0.1 + 0.9 * 0.5 * (1 - math.sqrt(0.5))),
        (110, 0.1),
        (200, 0.1),
    ],
)
def test_warmup_cosine_matches_hand_computed_values(step, expected):
    assert warmup_cosine(step, warmup=10, total=110, min_ratio=0.1) == pytest.approx(expected)


def test_each_step_uses_the_scheduled_learning_rate():
    model = LinearLoss()
    weights = []
    batches = iter(lambda: {"input_ids": torch.zeros(1), "labels": torch.zeros(1)}, None)
    train(model, batches, steps=12, lr=0.01, warmup=4, min_lr_ratio=0.1, progress=False,
          on_step=lambda step, loss: weights.append(model.weight[0].item()))  # fmt: skip
    moves = [-(after - before) for before, after in zip([0.0, *weights], weights)]
    expected = [0.01 * warmup_cosine(step, warmup=4, total=12, min_ratio=0.1) for step in range(12)]
    assert moves == pytest.approx(expected, rel=1e-4)


def test_loss_falls_on_a_learnable_stream():
    vocab_size = 12
    tokens = torch.arange(600) % vocab_size
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = BigramModel(vocab_size)
    losses = train(model, random_batches(tokens, 8, 16, generator), steps=150, lr=0.05, warmup=10, progress=False)
    assert losses[0] == pytest.approx(math.log(vocab_size), abs=0.5)
    assert sum(losses[-10:]) / 10 < 0.1


def test_seeded_runs_are_identical_and_leave_the_global_rng_alone():
    tokens = torch.arange(500) % 7

    def run():
        torch.manual_seed(0)
        model = BigramModel(7, dropout=0.3)
        generator = torch.Generator().manual_seed(1)
        global_state = torch.get_rng_state()
        losses = train(model, random_batches(tokens, 4, 8, generator), steps=20, lr=0.01, generator=generator,
                       progress=False)  # fmt: skip
        assert torch.equal(torch.get_rng_state(), global_state)
        return losses

    assert run() == run()


def test_sample_batch_draws_contiguous_windows():
    batch = sample_batch(torch.arange(100), batch_size=5, seq_len=10, generator=torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (5, 10)
    assert torch.equal(batch["labels"], batch["input_ids"])
    starts = batch["input_ids"][:, :1]
    assert torch.equal(batch["input_ids"], starts + torch.arange(10))
    assert int(starts.max()) <= 90


def test_sample_batch_rejects_a_stream_shorter_than_a_window():
    with pytest.raises(DataError, match="fewer than seq_len"):
        sample_batch(torch.arange(5), batch_size=1, seq_len=10)
