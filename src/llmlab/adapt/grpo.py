"""GRPO, Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1): num_generations completions of
each prompt are sampled and scored, and each completion's advantage is its reward relative to its group's,
(r − mean) / (std + eps), or r − mean with scale_rewards false (Liu et al. 2025, Dr. GRPO); every token of a
completion shares it in PPO's clipped objective, optionally with the k3 estimate of the KL divergence to a reference.

The loss is aggregated as TRL's GRPOTrainer does by default (loss_type "dapo", Yu et al. 2025, DAPO): the per-token
losses summed over every completion token of the batch, divided by the number of those tokens — which is exactly
the Trainer's summed loss / count over the micro-batches of a step.
"""

from __future__ import annotations

from functools import partial

import torch

from llmlab.adapt.method import FinetuneContext, MethodParts
from llmlab.adapt.rewards import held_out_reward, scorer_from_params
from llmlab.adapt.rollout import (
    RolloutBatches, check_params, check_rollout_model, evaluation_logprobs, reference_logprobs, sample,
    sampling_config, sequence_logprobs,
)  # fmt: skip
from llmlab.errors import ConfigError

PARAMETERS = {
    "reward": None,  # reward functions, one or a list: names in llmlab.adapt.rewards.REWARD_FUNCTIONS, module:function
    "reward_weights": None,  # one weight per reward function (1.0 each by default)
    "reward_model": None,  # a reward model directory (llmlab.adapt.reward), scoring prompt + completion
    "num_generations": 4,  # G, completions per prompt
    "prompts_per_step": 4,  # prompts per rollout: each rollout has prompts_per_step × num_generations rows
    "max_new_tokens": 64,
    "temperature": 1.0,
    "top_p": 1.0,
    "epsilon": 0.2,  # the clipping range: ratios outside [1 − epsilon, 1 + epsilon_high] get no gradient
    "epsilon_high": None,  # DAPO's decoupled upper bound (0.28 there); epsilon when null
    "beta": 0.0,  # the KL coefficient (TRL's default 0: no reference model); DeepSeekMath used 0.04
    "scale_rewards": True,  # divide by the group's standard deviation; false for Dr. GRPO
    "num_iterations": 1,  # μ: passes over each rollout
    "minibatches": 1,  # optimiser steps per pass over a rollout
}
ADVANTAGE_EPSILON = 1e-4  # TRL's, added to the group's standard deviation


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = ADVANTAGE_EPSILON) -> torch.Tensor:
    """Each reward [rows] (groups of group_size consecutive rows) minus its group's mean, divided by the group's
    unbiased standard deviation + eps when scale."""
    groups = rewards.float().view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.flatten()


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref) per token: exp(ref − logp) − (ref − logp) − 1, never negative."""
    difference = ref_logps - logps
    return torch.exp(difference) - difference - 1


def grpo_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                    ref_logps: torch.Tensor | None = None, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                    beta: float = 0.0) -> torch.Tensor:
    """Per-token loss [rows, C]: −min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)·A), ρ = exp(logp − old), plus β·k3."""
    advantages = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    if beta:
        loss = loss + beta * k3_kl(logps, ref_logps)
    return loss


def grpo_loss(model, batch: dict, epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(summed per-token loss over the completion tokens, their count, metrics summed the same way) of a rollout
    batch; without old_logps (one pass, one minibatch) the policy is its own old policy, as in TRL."""
    logps = sequence_logprobs(model, batch, temperature)
    old_logps = batch["old_logps"] if "old_logps" in batch else logps.detach()
    mask = batch["completion_mask"].float()
    per_token = grpo_token_loss(logps, old_logps, batch["advantages"], batch.get("ref_logps"), epsilon_low,
                                epsilon_high, beta)
    count = mask.sum()
    ratio = torch.exp(logps.detach() - old_logps)
    advantages = batch["advantages"][:, None]
    clipped = ((ratio < 1 - epsilon_low) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    metrics = {"reward": batch["rewards"].mean() * count, "clip_ratio": (clipped * mask).sum()}
    if beta:
        metrics["kl"] = (k3_kl(logps.detach(), batch["ref_logps"]) * mask).sum()
    return (per_token * mask).sum(), count, metrics


def build(context: FinetuneContext) -> MethodParts:
    """GRPO's rollouts of context.model on the prompt records, and its loss."""
    params = context.params
    check_params("grpo", params, counts=("num_generations", "prompts_per_step", "max_new_tokens", "num_iterations",
                                         "minibatches"),
                 positive=("temperature", "top_p", "epsilon"), non_negative=("beta",))
    if params["num_generations"] < 2:
        raise ConfigError(f"method.num_generations of grpo must be at least 2 to compare completions in a group, "
                          f"not {params['num_generations']}.")
    epsilon_high = params["epsilon"] if params["epsilon_high"] is None else params["epsilon_high"]
    policy, group, temperature = context.model, params["num_generations"], params["temperature"]
    check_rollout_model(policy, "grpo")
    scorer = scorer_from_params(params, context.device)
    reference = reference_logprobs(policy, context.adapter_disabled) if params["beta"] else None
    config = sampling_config(policy, params["max_new_tokens"], temperature, params["top_p"], n=group)
    on_policy = params["num_iterations"] == 1 and params["minibatches"] == 1

    def collect(records: list[dict], seed: int) -> dict[str, torch.Tensor]:
        rollout = sample(policy, [context.encode_prompt(record["prompt"]) for record in records],
                         config.replace(seed=seed), context.tokenizer)
        rewards = scorer([record for record in records for _ in range(group)], rollout)
        batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
                 "completion_mask": rollout.completion_mask, "rewards": rewards,
                 "advantages": group_advantages(rewards, group, params["scale_rewards"])}
        if not on_policy:
            batch["old_logps"] = evaluation_logprobs(policy, batch, temperature)
        if reference is not None:
            batch["ref_logps"] = reference(batch, temperature)
        return batch

    batches = RolloutBatches(context.examples, collect, params["prompts_per_step"], params["minibatches"],
                             params["num_iterations"], context.seed)
    loss_fn = partial(grpo_loss, epsilon_low=params["epsilon"], epsilon_high=epsilon_high, beta=params["beta"],
                      temperature=temperature)
    notes = [f"grpo: {params['prompts_per_step']} prompts × {group} completions a rollout"
             + (f", KL to the {'base without the adapter' if context.adapter_disabled else 'initial model'} "
                f"(beta {params['beta']})" if params["beta"] else "")]
    return MethodParts(loss_fn=loss_fn, batches=batches, evaluate=held_out_reward(context, scorer, config),
                       notes=notes)
