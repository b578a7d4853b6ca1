"""PPO: GAE, the KL-penalised rewards, whitening and the clipped policy and value losses against hand-computed
numbers; the value head on the hidden states, its save and load through MethodParts.extra_state and the Trainer's
checkpoints; a few PPO steps on a tiny model that change the policy and raise a dense reward; resume."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmlab.adapt import ppo
from llmlab.adapt.ppo import (
    PolicyWithValue, generalized_advantages, masked_whiten, penalised_rewards, per_token_kl, ppo_token_losses,
)  # fmt: skip
from llmlab.errors import CheckpointError, ConfigError
from llmlab.train.checkpoint import load_checkpoint, save_checkpoint
from llmlab.train.loop import Trainer, TrainConfig
from tests.adapt.test_rollout import make_context, tiny_model


def test_gae_on_a_hand_computed_three_step_case():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [0.2, 0.3, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second row ended after two tokens: its last entries are padding
    advantages, returns = generalized_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards: δ2 = 1 − 0.6 = 0.4; δ1 = 0.9·0.6 − 0.4 = 0.14, A1 = 0.14 + 0.72·0.4 = 0.428;
    # δ0 = 0.9·0.4 − 0.5 = −0.14, A0 = −0.14 + 0.72·0.428 = 0.16816
    # row 1: δ1 = 0 + 0.9·0 − 0.3 = −0.3; δ0 = 0.5 + 0.9·0.3 − 0.2 = 0.57, A0 = 0.57 + 0.72·(−0.3) = 0.354
    torch.testing.assert_close(advantages, torch.tensor([[0.16816, 0.428, 0.4], [0.354, -0.3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.66816, 0.828, 1.0], [0.554, 0.0, 0.0]]))


def test_kl_penalised_rewards_put_the_score_on_the_last_token():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25, 1.0], [1.0, 0.5, 0.5]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = per_token_kl(logps, ref) * mask
    rewards = penalised_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    ln2 = math.log(2)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1 * ln2, 0.0, 0.1 * ln2 + 2.0], [0.1 * ln2, -1.0, 0.0]]))
    # k3: exp(ref − logp) − (ref − logp) − 1 with ref − logp = −ln 2 for the first token
    torch.testing.assert_close(per_token_kl(logps, ref, "k3")[0, 0], torch.tensor(0.5 + ln2 - 1))


def test_masked_whitening():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    whitened = masked_whiten(values, mask)
    std = math.sqrt(sum((v - 2.5) ** 2 for v in [1, 2, 3, 4]) / 3)  # unbiased, over the four masked entries
    expected = torch.tensor([[-1.5, -0.5, 0.5], [1.5, 0, 0]]) / std
    torch.testing.assert_close(whitened, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), (expected + 2.5) * mask)


def test_clipped_policy_and_value_losses_on_hand_computed_numbers():
    old = torch.zeros(1, 3)
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.9]]))  # ratios 1.5, 0.5, 0.9
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    values = torch.tensor([[1.0, 0.6, 0.0]])
    old_values = torch.tensor([[0.5, 0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0, 0.1]])
    policy, value = ppo_token_losses(logps, old, advantages, values, old_values, returns, 0.2, 0.2)
    # policy: max(−Aρ, −A·clip ρ): max(−1.5, −1.2) = −1.2; max(0.5, 0.8) = 0.8; ρ = 0.9 inside: −1.8
    torch.testing.assert_close(policy, torch.tensor([[-1.2, 0.8, -1.8]]))
    # value: clip(V, 0.3, 0.7) = 0.7, 0.6, 0.3; ½·max((V − R)², (clip − R)²) = ½·1.69, ½·0.36, ½·0.04
    torch.testing.assert_close(value, torch.tensor([[0.845, 0.18, 0.02]]))


def test_the_value_head_reads_the_final_hidden_states():
    model = tiny_model("gpt2")  # tied embeddings
    wrapped = PolicyWithValue(model)
    assert all(v.abs().sum() == 0 for v in wrapped.value_head.parameters())  # starts at V = 0
    torch.nn.init.normal_(wrapped.value_head.weight)
    ids = torch.tensor([[2, 3, 4, 5], [0, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    output = wrapped(ids, mask)
    hidden, _ = model.hidden(model.prepare(ids, mask))
    torch.testing.assert_close(output.values, hidden @ wrapped.value_head.weight[0] + wrapped.value_head.bias)
    torch.testing.assert_close(output.logits, model(ids, mask).logits)
    assert set(wrapped.state_dict()) == set(model.state_dict()) | {"value_head.weight", "value_head.bias"}
    wrapped.eval()
    assert not model.training and not model.decoder.training
    wrapped.train()
    assert model.training


def ppo_params(**changes):
    def fraction_of_a(prompts, completions, **columns):
        return [sum(word == "a" for word in text.split()) / 4 for text in completions]
    return {**ppo.PARAMETERS, "reward": fraction_of_a, "max_new_tokens": 4, "temperature": 1.0,
            "prompts_per_step": 8, "ppo_epochs": 2, "minibatches": 2, **changes}


def train(context, steps, run_dir=None, resume=None, checkpoint_every=0, lr=1e-2):
    parts = ppo.build(context)
    config = TrainConfig(steps=steps, lr=lr, schedule="constant", weight_decay=0.0, log_every=100,
                         checkpoint_every=checkpoint_every)
    trainer = Trainer(parts.model, config, parts.batches, loss_fn=parts.loss_fn, progress=False, run_dir=run_dir)
    if resume is not None:
        trainer.resume(resume)
    trainer.fit()
    return parts


def test_a_few_ppo_steps_change_the_policy_and_raise_a_dense_reward():
    """Reward: the fraction of a completion's 4 tokens that are "a" (1 in 12 at first)."""
    model = tiny_model()
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    context = make_context(model, ppo_params(), held_out=[{"prompt": "b c"}])
    parts = train(context, steps=48)
    history = parts.batches.history
    assert all(math.isfinite(reward) for reward in history) and len(history) == 12
    assert sum(history[:2]) / 2 < 0.2 and sum(history[-3:]) / 3 > 0.4, history  # holds for model seeds 0-4
    assert any(not torch.equal(initial[name], tensor) for name, tensor in model.state_dict().items())
    assert parts.model.value_head.weight.abs().sum() > 0
    assert 0 <= parts.evaluate(parts.model)["reward"] <= 1


def test_the_value_head_saves_and_loads_through_extra_state(tmp_path):
    context = make_context(tiny_model(), ppo_params())
    parts = train(context, steps=4)
    save_file(parts.extra_state(), tmp_path / "value_head.safetensors")
    restored = PolicyWithValue(tiny_model())
    restored.policy.load_state_dict(context.model.state_dict())
    restored.load_value_head(load_file(tmp_path / "value_head.safetensors"))
    ids = torch.tensor([[2, 3, 4, 5]])
    torch.testing.assert_close(restored(ids).values, parts.model(ids).values, rtol=0, atol=0)
    assert restored(ids).values.abs().sum() > 0
    with pytest.raises(CheckpointError, match="value_head"):
        restored.load_value_head({"value_head.weight": torch.zeros(1, 32)})
    with pytest.raises(CheckpointError, match="d_model"):
        restored.load_value_head({"value_head.weight": torch.zeros(1, 8), "value_head.bias": torch.zeros(1)})


def test_trainer_checkpoints_of_the_policy_with_its_value_head_load_back(tmp_path):
    wrapped = PolicyWithValue(tiny_model("gpt2"))  # tied embeddings: the checkpoint stores the head once
    torch.nn.init.normal_(wrapped.value_head.weight)
    path = save_checkpoint(tmp_path, 1, wrapped, {"step": 1})
    fresh = PolicyWithValue(tiny_model("gpt2", seed=1))
    load_checkpoint(path, fresh)
    for (name, expected), actual in zip(wrapped.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    params = ppo_params(prompts_per_step=4)
    uninterrupted = train(make_context(tiny_model(), params), steps=6)
    train(make_context(tiny_model(), params), steps=3, run_dir=tmp_path, checkpoint_every=3)  # inside a rollout
    resumed = train(make_context(tiny_model(), params), steps=6, run_dir=tmp_path,
                    resume=tmp_path / "checkpoints" / "step-3")
    for (name, expected), actual in zip(uninterrupted.model.state_dict().items(),
                                        resumed.model.state_dict().values()):
        assert torch.equal(expected, actual), name
    assert resumed.batches.history == uninterrupted.batches.history


def test_bad_parameters_are_one_sentence_errors():
    for changes, words in [({"kl_estimator": "k2"}, "kl_estimator"), ({"ppo_epochs": 0}, "ppo_epochs"),
                           ({"cliprange": -1}, "cliprange"), ({"reward": None}, "reward")]:
        with pytest.raises(ConfigError, match=words):
            ppo.build(make_context(tiny_model(), ppo_params(**changes)))
