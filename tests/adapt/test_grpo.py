"""GRPO: group advantages and the k3 KL against their formulas, the clipped loss against a hand-computed case and
against TRL's GRPOTrainer._compute_loss on the same tensors, the mean reward rising on a tiny model, and a resumed
run equal to an uninterrupted one."""

import math
from types import SimpleNamespace

import pytest
import torch

from llmlab.adapt import grpo
from llmlab.adapt.grpo import group_advantages, grpo_loss, grpo_token_loss, k3_kl
from llmlab.errors import ConfigError
from llmlab.train.loop import Trainer, TrainConfig
from tests.adapt.test_rollout import PROMPTS, make_context, starts_with_a, tiny_model


def test_group_advantages_follow_the_formula():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 1.0])
    std = math.sqrt((2 * 0.5**2 + 2 * 0.5**2) / 3)  # the unbiased standard deviation of 1, 0, 0, 1
    std3 = math.sqrt(((0 - 1) ** 2 * 2 + (3 - 1) ** 2 + 0) / 3)  # of 0, 3, 0, 1 (mean 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0, 0, 0, 0,
                -1 / (std3 + 1e-4), 2 / (std3 + 1e-4), -1 / (std3 + 1e-4), 0]
    torch.testing.assert_close(group_advantages(rewards, 4), torch.tensor(expected))
    unscaled = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -1, 2, -1, 0]  # Dr. GRPO: r - mean only
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False), torch.tensor(unscaled, dtype=torch.float))


def test_k3_kl_follows_the_formula():
    logps = torch.log(torch.tensor([0.5, 0.25, 0.1]))
    ref = torch.log(torch.tensor([0.25, 0.25, 0.4]))
    # exp(ref - logp) - (ref - logp) - 1 by hand: ratio ref/p = 0.5, 1, 4
    expected = torch.tensor([0.5 - math.log(0.5) - 1, 0.0, 4 - math.log(4) - 1])
    torch.testing.assert_close(k3_kl(logps, ref), expected)


def test_the_clipped_loss_on_a_hand_computed_case():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))  # ratios 1.5, 0.5, 0.5, 1.5
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    # A > 0: min(ρ, clip ρ)·A = 1.2 (clipped above), 0.5; A < 0: min(-ρ, -clip ρ) = -0.8 (clipped below), -1.5
    expected = torch.tensor([[-1.2, -0.5, 0.8, 1.5]])
    torch.testing.assert_close(grpo_token_loss(logps, old, advantages), expected)
    # DAPO's decoupled upper bound: 1 + 0.3 caps the first ratio at 1.3
    torch.testing.assert_close(grpo_token_loss(logps, old, advantages, epsilon_high=0.3)[0, 0], torch.tensor(-1.3))
    ref = torch.log(torch.tensor([[0.75, 0.5, 1.0, 1.5]]))
    with_kl = grpo_token_loss(logps, old, advantages, ref, beta=0.1)
    torch.testing.assert_close(with_kl, expected + 0.1 * torch.tensor([[0.5 - math.log(0.5) - 1, 0,
                                                                        2 - math.log(2) - 1, 0]]))


class Logits(torch.nn.Module):
    """A 'model' whose logits are fixed, so that the loss sees chosen per-token log-probabilities."""

    config = SimpleNamespace(arch="decoder")

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits)


def trl_loss(logps, inputs, beta, epsilon, epsilon_high):
    """TRL's GRPOTrainer._compute_loss (its default loss_type "dapo") on given per-token log-probabilities, called on
    a stand-in for the trainer with the attributes it reads."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    identity = SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x,
                               num_processes=1, sync_gradients=True)
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, args=args, loss_type="dapo", epsilon_low=epsilon,
        epsilon_high=epsilon_high, use_vllm=False, model=SimpleNamespace(training=True), accelerator=identity,
        current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        _metrics={"train": __import__("collections").defaultdict(list)})
    assert trl_grpo.GRPOConfig.__dataclass_fields__["loss_type"].default == "dapo"
    return trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_the_summed_loss_equals_trls(beta):
    torch.manual_seed(0)
    rows, prompt, width, vocab = 6, 3, 5, 11
    logits = torch.randn(rows, prompt + width, vocab)
    input_ids = torch.randint(0, vocab, (rows, prompt + width))
    completion_mask = torch.ones(rows, width, dtype=torch.long)
    for row, length in enumerate([5, 3, 1, 4, 5, 2]):
        completion_mask[row, length:] = 0
    batch = {"input_ids": input_ids, "attention_mask": torch.cat([torch.ones(rows, prompt, dtype=torch.long),
                                                                  completion_mask], 1),
             "completion_mask": completion_mask, "advantages": torch.randn(rows), "rewards": torch.rand(rows),
             "old_logps": torch.randn(rows, width) * 0.1 - 2.5, "ref_logps": torch.randn(rows, width) * 0.1 - 2.5}
    model = Logits(logits)
    summed, count, _ = grpo_loss(model, batch, epsilon_low=0.2, epsilon_high=0.28, beta=beta)
    logps = (logits[:, prompt - 1:-1]).log_softmax(-1).gather(-1, input_ids[:, prompt:, None]).squeeze(-1)
    inputs = {"prompt_ids": input_ids[:, :prompt], "prompt_mask": torch.ones(rows, prompt),
              "completion_ids": input_ids[:, prompt:], "completion_mask": completion_mask.float(),
              "advantages": batch["advantages"], "old_per_token_logps": batch["old_logps"],
              "ref_per_token_logps": batch["ref_logps"], "num_items_in_batch": completion_mask.sum().float()}
    expected = trl_loss(logps, inputs, beta, 0.2, 0.28)
    assert count == completion_mask.sum()
    torch.testing.assert_close(summed / count, expected, atol=1e-6, rtol=1e-6)
    # and the gradient, which is what trains the model
    gradient, = torch.autograd.grad(summed / count, model.logits)
    reference_logits = logits.clone().requires_grad_(True)
    reference_logps = reference_logits[:, prompt - 1:-1].log_softmax(-1).gather(
        -1, input_ids[:, prompt:, None]).squeeze(-1)
    expected_gradient, = torch.autograd.grad(trl_loss(reference_logps, inputs, beta, 0.2, 0.28), reference_logits)
    torch.testing.assert_close(gradient, expected_gradient, atol=1e-6, rtol=1e-5)


def grpo_params(**changes):
    return {**grpo.PARAMETERS, "reward": starts_with_a, "max_new_tokens": 4, "num_generations": 8, **changes}


def train(context, steps, run_dir=None, resume=None, checkpoint_every=0):
    parts = grpo.build(context)
    config = TrainConfig(steps=steps, lr=3e-2, schedule="constant", weight_decay=0.0, log_every=100,
                         checkpoint_every=checkpoint_every)
    trainer = Trainer(context.model, config, parts.batches, loss_fn=parts.loss_fn, progress=False, run_dir=run_dir)
    if resume is not None:
        trainer.resume(resume)
    trainer.fit()
    return parts


def test_the_mean_reward_rises_on_a_tiny_model():
    """Reward 1 when a completion starts with "a" (1 in 12 tokens at first): a dozen GRPO steps make it the rule."""
    context = make_context(tiny_model(), grpo_params(), held_out=[{"prompt": p} for p in PROMPTS])
    parts = train(context, steps=12)
    history = parts.batches.history
    assert sum(history[:2]) / 2 < 0.35 and sum(history[-3:]) / 3 > 0.8, history  # holds for model seeds 0-4
    assert parts.evaluate(context.model) == {"reward": 1.0}  # greedy completions of the held-out prompts


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """With two passes of two minibatches a rollout (4 steps), a checkpoint at step 3 falls inside one; the KL term is
    on, so the reference is a frozen copy of the initial model in both runs."""
    params = grpo_params(num_iterations=2, minibatches=2, beta=0.1, num_generations=4, prompts_per_step=2)
    whole = make_context(tiny_model(), params)
    uninterrupted = train(whole, steps=6)
    first = make_context(tiny_model(), params)
    train(first, steps=3, run_dir=tmp_path, checkpoint_every=3)
    second = make_context(tiny_model(), params)
    parts = train(second, steps=6, run_dir=tmp_path, resume=tmp_path / "checkpoints" / "step-3")
    for (name, expected), actual in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(expected, actual), name
    assert parts.batches.history == uninterrupted.batches.history and len(parts.batches.history) == 2


def test_bad_parameters_are_one_sentence_errors():
    model = tiny_model()
    for changes, words in [({"num_generations": 1}, "num_generations"), ({"reward": None}, "reward"),
                           ({"epsilon": 0}, "epsilon"), ({"max_new_tokens": 0}, "max_new_tokens"),
                           ({"reward": "no_such_reward"}, "no_such_reward")]:
        with pytest.raises(ConfigError, match=words):
            grpo.build(make_context(model, grpo_params(**changes)))
    with pytest.raises(ConfigError, match="decoder"):
        grpo.build(make_context(tiny_model("t5"), grpo_params()))
