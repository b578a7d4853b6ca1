"""The reward model: the Bradley–Terry loss and accuracy on hand-made scores and against TRL's RewardTrainer, the score
against transformers' sequence classifier on the same weights, saving and loading, and training on a tiny model."""

import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmlab.adapt import reward
from llmlab.adapt.logprobs import padded_batch
from llmlab.adapt.reward import (Pair, PairBatches, RewardModel, bradley_terry_losses, collate_pairs,
                                 load_reward_model, reward_loss, save_reward_model)
from llmlab.errors import CheckpointError, ConfigError, DataError
from llmlab.model.hf import save_hf
from llmlab.train.loop import Trainer, TrainConfig
from tests.adapt.test_logprobs import char_ids, make_context, tiny_model


class ScoreOfFirstToken(nn.Module):
    """A stand-in reward model whose score for a row is table[its first token]: scores chosen by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, **_):
        return self.table[input_ids[:, 0]]


def pairs_batch(chosen_rows, rejected_rows, margins=None):
    """A pair-major batch whose pair i is chosen_rows[i] against rejected_rows[i] (token-id lists)."""
    pairs = [Pair((c, []), (r, []), 0.0 if margins is None else margins[i])
             for i, (c, r) in enumerate(zip(chosen_rows, rejected_rows))]
    return collate_pairs(pairs, pad_id=0)


def test_loss_and_accuracy_on_hand_made_scores():
    # pair scores (chosen, rejected): (2, 1), (0, 1), (1, 1): one right, one wrong, one tie (not right)
    model = ScoreOfFirstToken([0.0, 1.0, 2.0])
    batch = pairs_batch([[2, 1], [0], [1, 1, 1]], [[1], [1, 2], [1]], margins=[0.5, 0.0, 0.0])
    summed, count, metrics = reward_loss(model, batch)
    expected = math.log(1 + math.exp(-0.5)) + math.log(1 + math.e) + math.log(2)
    assert int(count) == 3 and summed.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == 1.0 and metrics["margin"].item() == pytest.approx(0.0)
    centered, _, _ = reward_loss(model, batch, center_rewards_coefficient=0.1)
    assert (centered - summed).item() == pytest.approx(0.1 * (3**2 + 1**2 + 2**2), rel=1e-6)


def trl_reward_loss(scores_flat, margin, coefficient):
    """TRL's RewardTrainer.compute_loss, on a stand-in self and a model whose logits are the given scores."""
    from trl.trainer.reward_trainer import RewardTrainer

    identity = lambda tensor: tensor  # noqa: E731  (one process: gathering changes nothing)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), args=SimpleNamespace(center_rewards_coefficient=coefficient),
        accelerator=SimpleNamespace(gather_for_metrics=identity, gather=identity), _total_train_tokens=0,
        _tp_size=1, _metrics={"train": {name: [] for name in ("num_tokens", "min_reward", "mean_reward", "max_reward",
                                                             "accuracy", "margin")}},
    )  # fmt: skip
    inputs = {"input_ids": torch.arange(len(scores_flat))[:, None], "attention_mask": torch.ones(len(scores_flat), 1)}
    if margin is not None:
        inputs["margin"] = margin
    loss = RewardTrainer.compute_loss(stub, lambda **_: SimpleNamespace(logits=scores_flat[:, None]), inputs)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("coefficient, with_margin", [(None, False), (None, True), (0.01, True)])
def test_loss_equals_trl_reward_trainer(coefficient, with_margin):
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(1)
    pairs = 6
    scores = torch.randn(2 * pairs, generator=generator) * 3  # TRL's layout: every chosen, then every rejected
    margin = torch.rand(pairs, generator=generator) if with_margin else None
    expected, trl_metrics = trl_reward_loss(scores, margin, coefficient)
    # the same scores through llmlab's pair-major batch: row i of the flat batch holds token i
    batch = pairs_batch([[i] for i in range(pairs)], [[pairs + i] for i in range(pairs)],
                        margins=margin.tolist() if with_margin else None)
    summed, count, metrics = reward_loss(ScoreOfFirstToken(scores), batch, coefficient)
    assert (summed / count).item() == pytest.approx(expected.item(), abs=1e-6)
    assert (metrics["accuracy"] / count).item() == pytest.approx(trl_metrics["accuracy"][0], abs=1e-6)
    assert (metrics["margin"] / count).item() == pytest.approx(trl_metrics["margin"][0], abs=1e-6)


def test_bradley_terry_is_the_log_likelihood_of_the_preference():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.4])
    probability = 1 / (1 + torch.exp(-(chosen - rejected)))  # P(chosen ≻ rejected) under Bradley–Terry
    assert bradley_terry_losses(chosen, rejected).tolist() == pytest.approx((-probability.log()).tolist(), rel=1e-6)


def test_score_equals_transformers_sequence_classifier_on_a_padded_batch(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = RewardModel(tiny_model("llama")).eval()
    save_hf(model.model, tmp_path)
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1,
                                                                              pad_token_id=0).eval()
    with torch.no_grad():
        reference.score.weight.copy_(model.score.weight)
        batch = padded_batch([(char_ids(text), []) for text in ("hello there", "hi", "a middling one")], pad_id=0)
        scores = model(batch["input_ids"], batch["attention_mask"])
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert scores.tolist() == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("name", ["bert", "t5_v1_1", "gpt2"])
def test_score_reads_the_last_token_whatever_the_padding(name):
    model = RewardModel(tiny_model(name)).eval()
    texts = ("hello there", "hi", "a middling one")
    with torch.no_grad():
        batch = padded_batch([(char_ids(text), []) for text in texts], pad_id=0)
        batched = model(batch["input_ids"], batch["attention_mask"])
        alone = [model(torch.tensor([char_ids(text)])).item() for text in texts]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)
    if name == "gpt2":  # a decoder's left padding: the same last token, positions counted from the first token
        with torch.no_grad():
            left = model(torch.tensor([[0, 0, *char_ids("hi")]]), torch.tensor([[0, 0, 1, 1]]))
        assert left.item() == pytest.approx(alone[1], abs=1e-5)


def test_the_lm_head_is_frozen_and_the_embedding_trains():
    model = RewardModel(tiny_model("llama"))
    assert not model.model.head.weight.requires_grad and model.model.embed.tokens.weight.requires_grad
    tied = RewardModel(tiny_model("gpt2"))  # GPT-2's head is its embedding
    assert tied.model.embed.tokens.weight.requires_grad


def test_save_and_load(tmp_path):
    import llmlab

    model = RewardModel(tiny_model("llama")).eval()
    ids = torch.tensor([char_ids("some text")])
    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded(ids).item() == pytest.approx(model(ids).item(), abs=1e-6)
    assert isinstance(llmlab.load(tmp_path / "rm"), llmlab.Model)  # the base is a plain checkpoint
    with pytest.raises(CheckpointError, match="not empty"):
        save_reward_model(model, tmp_path / "rm")
    save_hf(model.model, tmp_path / "base")
    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(tmp_path / "base")


def preference_examples(count, seed):
    """Pairs a reward model can learn: the chosen response repeats 'a', the rejected one 'z'."""
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choice("bcdef") for _ in range(rng.randint(1, 4))),
             "chosen": "a" * rng.randint(1, 5), "rejected": "z" * rng.randint(1, 5)} for _ in range(count)]


def test_build_trains_and_evaluates_pairwise_accuracy(tmp_path):
    context = make_context(tiny_model("llama"), preference_examples(32, 0), preference_examples(8, 1), tmp_path,
                           params={"batch_size": 8})
    parts = reward.build(context)
    before = parts.evaluate(parts.model)
    config = TrainConfig(steps=12, lr=5e-3, schedule="constant", weight_decay=0.0, device="cpu")
    losses = Trainer(parts.model, config, parts.batches, loss_fn=parts.loss_fn, progress=False).fit()
    after = parts.evaluate(parts.model)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert after["accuracy"] == 1.0 and before["accuracy"] < 1.0
    assert set(parts.extra_state()) == {"score.weight"}


def test_batches_resume_where_they_left_off_and_visit_every_pair_each_epoch():
    pairs = [Pair(([3 + i], []), ([4 + i], [])) for i in range(6)]
    batches = PairBatches(pairs, batch_size=4, pad_id=0, seed=3)
    seen = [next(batches) for _ in range(3)]  # 12 positions: two epochs
    resumed = PairBatches(pairs, batch_size=4, pad_id=0, seed=3)
    resumed.load_state_dict({"step": 2})
    assert torch.equal(next(resumed)["input_ids"], seen[2]["input_ids"])
    firsts = torch.cat([batch["input_ids"][:, 0, 0] for batch in seen]).tolist()
    assert sorted(firsts[:6]) == sorted(firsts[6:]) == [3 + i for i in range(6)]


def test_bad_pairs_and_parameters_are_one_sentence_errors(tmp_path):
    model = tiny_model("llama")
    same = [{"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match="example 0 has the same chosen and rejected"):
        reward.build(make_context(model, same, run_dir=tmp_path))
    with pytest.raises(DataError, match="lacks the field"):
        reward.build(make_context(model, [{"prompt": "p", "chosen": "x"}], run_dir=tmp_path))
    with pytest.raises(ConfigError, match="method.batch_size"):
        reward.build(make_context(model, preference_examples(2, 0), run_dir=tmp_path, params={"batch_size": 0}))
    with pytest.raises(DataError, match="no preference pair is left"):
        reward.build(make_context(model, preference_examples(2, 0), run_dir=tmp_path, params={"max_length": 1}))
