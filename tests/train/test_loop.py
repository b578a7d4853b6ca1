import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmlab.data.packing import sample_batch
from llmlab.errors import ConfigError, DataError
from llmlab.model import presets
from llmlab.model.transformer import Model
from llmlab.objectives.losses import z_loss
from llmlab.train.loop import TrainConfig, Trainer, train, training_flops_per_token
from llmlab.train.optim import parameter_groups
from llmlab.train.schedules import warmup_constant, warmup_cosine, warmup_linear, warmup_stable_decay
from llmlab.train.stability import SpikeGuard


class Windows:
    """Seeded random-window batches of a token stream whose position (generator state, batches drawn) checkpoints:
    the trainer's data without the shard pipeline."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        self.drawn += 1
        return sample_batch(self.tokens, self.batch_size, self.seq_len, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = int(state["drawn"])


class BigramModel(nn.Module):
    """A stand-in language model: next-token logits from the current token only."""

    def __init__(self, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 16)
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, vocab_size)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.head(self.hidden(self.dropout(self.embedding(input_ids)))))


class LinearLoss(nn.Module):
    """loss = scale · (10 + sum(w)): positive, with a constant gradient, so Adam moves each weight by exactly lr."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))

    def forward(self, input_ids, scale):
        return SimpleNamespace(loss=(10 + self.weight.sum()) * scale, logits=None)


def linear_loss(model, batch):
    """LinearLoss's loss as a Trainer loss function: (summed loss, one token, no metrics)."""
    return model(**batch).loss, torch.tensor(1), {}


def constant_batches(scales=()):
    """Batches for LinearLoss: scale 1 except where scales (step → value) says otherwise."""
    step = 0
    while True:
        yield {"input_ids": torch.zeros(1), "scale": torch.tensor(scales.get(step, 1.0) if scales else 1.0)}
        step += 1


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1 / 10), (4, 5 / 10), (9, 1.0), (10, 1.0), (60, 0.1 + 0.9 * 0.5), (85, 0.1 + 0.9 * 0.5 * (1 - math.sqrt(0.5))),
     (110, 0.1), (200, 0.1)],
)  # fmt: skip
def test_warmup_cosine_matches_hand_computed_values(step, expected):
    assert warmup_cosine(step, warmup=10, total=110, min_ratio=0.1) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        (warmup_linear, 4, 0.5), (warmup_linear, 10, 1.0), (warmup_linear, 60, 1 - 0.9 * 0.5),
        (warmup_linear, 110, 0.1),
        (warmup_constant, 0, 0.1), (warmup_constant, 9, 1.0), (warmup_constant, 500, 1.0),
        # WSD with total 110, decay over the last 20% = 22 steps, from step 88
        (warmup_stable_decay, 4, 0.5), (warmup_stable_decay, 50, 1.0), (warmup_stable_decay, 87, 1.0),
        (warmup_stable_decay, 99, 1 - 0.9 * 11 / 22), (warmup_stable_decay, 110, 0.1),
    ],
)  # fmt: skip
def test_other_schedules_match_hand_computed_values(schedule, step, expected):
    assert schedule(step, warmup=10, total=110, min_ratio=0.1, decay_fraction=0.2) == pytest.approx(expected)


def test_each_step_uses_the_scheduled_learning_rate():
    model = LinearLoss()
    weights = []
    config = TrainConfig(steps=12, lr=0.01, warmup=4, min_lr_ratio=0.1, weight_decay=0.0)
    train(model, constant_batches(), config, progress=False, loss_fn=linear_loss,
          on_step=lambda step, loss: weights.append(model.weight[0].item()))
    moves = [-(after - before) for before, after in zip([0.0, *weights], weights)]
    expected = [0.01 * warmup_cosine(step, warmup=4, total=12, min_ratio=0.1) for step in range(12)]
    assert moves == pytest.approx(expected, rel=1e-4)


def test_loss_falls_on_a_learnable_stream():
    vocab_size = 12
    torch.manual_seed(0)
    model = BigramModel(vocab_size)
    batches = Windows(torch.arange(600) % vocab_size, 8, 16, seed=0)
    losses = train(model, batches, TrainConfig(steps=150, lr=0.05, warmup=10), progress=False)
    assert losses[0] == pytest.approx(math.log(vocab_size), abs=0.5)
    assert sum(losses[-10:]) / 10 < 0.1


def test_adafactor_learns_too():
    torch.manual_seed(0)
    model = BigramModel(12)
    batches = Windows(torch.arange(600) % 12, 8, 16, seed=0)
    losses = train(model, batches, TrainConfig(steps=100, lr=0.05, optimizer="adafactor"), progress=False)
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0]


def test_seeded_runs_are_identical_and_leave_the_global_rng_alone():
    def run():
        torch.manual_seed(0)
        model = BigramModel(7, dropout=0.3)
        global_state = torch.get_rng_state()
        batches = Windows(torch.arange(500) % 7, 4, 8, seed=1)
        losses = train(model, batches, TrainConfig(steps=20, lr=0.01, seed=3), progress=False)
        assert torch.equal(torch.get_rng_state(), global_state)
        return losses

    assert run() == run()


def test_gradient_accumulation_equals_one_big_batch():
    tokens = torch.arange(400) % 9
    whole = sample_batch(tokens, 8, 12, torch.Generator().manual_seed(0))
    halves = [{name: value[:4] for name, value in whole.items()}, {name: value[4:] for name, value in whole.items()}]
    results = []
    for batches, accumulation in (([whole], 1), (halves, 2)):
        torch.manual_seed(0)
        model = BigramModel(9)
        train(model, iter(batches), TrainConfig(steps=1, lr=0.1, grad_accum=accumulation, grad_clip=None),
              progress=False)  # fmt: skip
        results.append(model.state_dict())
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=0, atol=1e-6)


def test_grad_norm_is_recorded_before_clipping():
    trainer = Trainer(LinearLoss(), TrainConfig(steps=1, lr=0.01, grad_clip=0.5), constant_batches(), progress=False,
                      loss_fn=linear_loss)
    assert trainer.train_step()["grad_norm"] == pytest.approx(math.sqrt(3))  # gradient (1, 1, 1)


def test_spike_guard_flags_non_finite_losses_and_spikes_over_the_median():
    guard = SpikeGuard(factor=3.0, window=5, min_history=3)
    assert guard.reason_to_skip(100.0) is None  # too little history to judge
    for loss in (1.0, 2.0, 9.0, 1.5):
        guard.accept(loss)
    assert guard.reason_to_skip(float("nan")) == "non-finite"
    assert guard.reason_to_skip(float("inf")) == "non-finite"
    assert guard.reason_to_skip(5.0) is None  # median of 1, 1.5, 2, 9 is 1.75; 3 × 1.75 = 5.25
    assert guard.reason_to_skip(5.5) == "spike"


def test_bad_steps_are_skipped_and_counted():
    model = LinearLoss()
    weights = []
    config = TrainConfig(steps=16, lr=0.01, schedule="constant", weight_decay=0.0, spike_factor=5.0, log_every=1)
    trainer = Trainer(model, config, constant_batches({12: float("nan"), 14: 100.0}), progress=False, loss_fn=linear_loss,
                      on_step=lambda step, loss: weights.append(model.weight[0].item()))  # fmt: skip
    trainer.fit()
    moves = [round(before - after, 6) for before, after in zip([0.0, *weights], weights)]
    assert moves == [0.01] * 12 + [0.0, 0.01, 0.0, 0.01]
    assert trainer.skipped == {"non-finite": 1, "spike": 1}


def test_z_loss_is_the_squared_log_normaliser():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]]])
    assert float(z_loss(logits)) == pytest.approx((math.log(4.0) ** 2 + math.log(4.0) ** 2) / 2)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_weight_decay_only_on_matrices_outside_embeddings(family):
    model = Model(presets.get(family, "tiny"))
    decayed, undecayed = (group["params"] for group in parameter_groups(model, 0.1))
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if model.config.tie_embeddings:
        linear_weights.discard("head.weight")  # the head is the token embedding
    assert {names[id(p)] for p in decayed} == linear_weights
    assert all(parameter.dim() == 1 or "embed" in names[id(parameter)] for parameter in undecayed)
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))


def test_activation_checkpointing_gives_the_same_gradients():
    config = presets.llama("tiny", n_layers=2, d_model=64, n_heads=2, d_ff=128, vocab_size=128)
    batch = sample_batch(torch.arange(300) % 128, 2, 16, torch.Generator().manual_seed(0))
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = Model(config)
        trainer = Trainer(model, TrainConfig(steps=1, activation_checkpointing=checkpointing), iter([batch]))
        trainer._loss(batch)[0].backward()
        gradients.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_train(precision):
    torch.manual_seed(0)
    model = BigramModel(12)
    batches = Windows(torch.arange(600) % 12, 8, 16, seed=0)
    losses = train(model, batches, TrainConfig(steps=60, lr=0.05, precision=precision), progress=False)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_invalid_train_settings_name_the_field():
    with pytest.raises(ConfigError, match="train.schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(ConfigError, match="train.grad_accum"):
        TrainConfig(grad_accum=0)


def test_sample_batch_rejects_a_stream_shorter_than_a_window():
    with pytest.raises(DataError, match="fewer than seq_len"):
        sample_batch(torch.arange(5), batch_size=1, seq_len=10)


def test_training_flops_follow_palm_appendix_b():
    # 6 · 1000 + 12 · 2 layers · 16 wide · 8 tokens = 6000 + 3072
    assert training_flops_per_token(1000, n_layers=2, d_model=16, seq_len=8) == 9072


def test_mfu_is_recorded_when_the_peak_is_given():
    config = presets.llama("tiny", n_layers=2, d_model=64, n_heads=2, d_ff=128, vocab_size=128)
    model = Model(config)
    batches = Windows(torch.arange(300) % 128, 2, 16, seed=0)
    record = Trainer(model, TrainConfig(steps=1, peak_flops=1e12), batches, progress=False).train_step()
    expected = training_flops_per_token(model.num_parameters(), 2, 64, 16) * 32 / record["step_time_s"] / 1e12
    assert record["mfu"] == pytest.approx(expected)


def test_a_loss_functions_metrics_are_logged_as_means_over_the_labelled_positions():
    def counted_loss(model, batch):  # a micro-batch of `count` positions, each contributing `scale` to the metric
        count = batch["count"]
        return model(batch["input_ids"], 1.0).loss * count, count, {"seen": batch["scale"] * count}

    def batches():
        while True:  # two micro-batches per step: 1 position with value 1, 3 positions with value 5
            yield {"input_ids": torch.zeros(1), "scale": torch.tensor(1.0), "count": torch.tensor(1)}
            yield {"input_ids": torch.zeros(1), "scale": torch.tensor(5.0), "count": torch.tensor(3)}

    trainer = Trainer(LinearLoss(), TrainConfig(steps=1, lr=0.01, grad_accum=2), batches(), progress=False,
                      loss_fn=counted_loss)
    record = trainer.train_step()
    assert record["seen"] == pytest.approx((1 * 1 + 5 * 3) / 4)  # weighted by positions, not by micro-batch
    assert record["loss"] == pytest.approx(10.0)
