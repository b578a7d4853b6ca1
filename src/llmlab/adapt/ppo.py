"""PPO for RLHF (Ouyang et al. 2022, InstructGPT; Schulman et al. 2017), in the formulation of TRL's PPOTrainer: the
policy carries a value head on its hidden states; each rollout samples one completion per prompt, a reward model (or
reward functions) scores the whole sequence, and the per-token reward is −kl_coef·(logp − ref) against a frozen
reference plus the score at the completion's last token; GAE (Schulman et al. 2016) turns rewards and values into
advantages, optionally whitened over the rollout; ppo_epochs passes of `minibatches` minibatches then minimise the
clipped policy loss plus vf_coef times the clipped value loss, each a mean over the completion tokens.

Unlike TRL, whose score lands on the token after the last one (its padding), the score lands on the last token, the
EOS that ended the completion included, and values are learned on exactly the completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from llmlab.adapt.method import FinetuneContext, MethodParts
from llmlab.adapt.rewards import held_out_reward, scorer_from_params
from llmlab.adapt.rollout import (
    RolloutBatches, check_params, check_rollout_model, completion_logprobs, evaluation_mode, model_inputs,
    reference_logprobs, sample, sampling_config,
)  # fmt: skip
from llmlab.errors import CheckpointError, ConfigError

PARAMETERS = {
    "reward": None,  # reward functions, one or a list: names in llmlab.adapt.rewards.REWARD_FUNCTIONS, module:function
    "reward_weights": None,  # one weight per reward function (1.0 each by default)
    "reward_model": None,  # a reward model directory (llmlab.adapt.reward), scoring prompt + completion
    "prompts_per_step": 8,  # prompts (one completion each) per rollout
    "max_new_tokens": 53,  # TRL's response_length
    "temperature": 0.7,
    "top_p": 1.0,
    "kl_coef": 0.05,
    "kl_estimator": "k1",  # logp − ref per token, or "k3": exp(ref − logp) − (ref − logp) − 1
    "gamma": 1.0,
    "lam": 0.95,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "whiten_advantages": True,
    "whiten_rewards": False,
    "missing_eos_penalty": None,  # subtracted from the score of a completion that ran out of tokens before its EOS
    "ppo_epochs": 4,
    "minibatches": 1,
}
KL_ESTIMATORS = ("k1", "k3")
VALUE_HEAD_KEYS = ("value_head.weight", "value_head.bias")
VALUE_HEAD_FILE = "value_head.safetensors"  # beside the policy in a finetune run's final/ directory


@dataclass
class ValueOutput:
    """What PolicyWithValue returns: the language model's logits and a value per position."""

    logits: torch.Tensor  # [batch, seq, vocab]
    values: torch.Tensor  # [batch, seq], float32


class PolicyWithValue(nn.Module):
    """An llmlab Model with a scalar value head on its final hidden states, trained with it (PPO's critic).

    It holds the model's own submodules, so its state dict is the model's plus value_head.weight and value_head.bias,
    and the Trainer's checkpoints of it load back into it; the head starts at zero (every value 0).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        if list(policy.parameters(recurse=False)) or list(policy.buffers(recurse=False)):
            raise ValueError("PolicyWithValue needs a model whose tensors all live in submodules.")
        for name, module in policy.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "policy", policy)  # not registered: its submodules already are
        self.value_head = nn.Linear(policy.config.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        parameter = next(policy.parameters())
        self.value_head.to(device=parameter.device, dtype=parameter.dtype)

    @property
    def config(self):
        """The policy's ModelConfig."""
        return self.policy.config

    @property
    def tokenizer(self):
        """The policy's tokenizer."""
        return self.policy.tokenizer

    def train(self, mode: bool = True) -> PolicyWithValue:
        """Set training mode here and on the policy itself (whose forward reads its own flag)."""
        super().train(mode)
        self.policy.training = mode
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                prefix_lengths: torch.Tensor | None = None) -> ValueOutput:
        """Logits and values of every position."""
        output = self.policy(input_ids, attention_mask, prefix_lengths=prefix_lengths)
        values = self.value_head(output.hidden_states).squeeze(-1).float()
        return ValueOutput(output.logits, values)

    def value_head_state(self) -> dict[str, torch.Tensor]:
        """The value head's tensors, under VALUE_HEAD_KEYS (MethodParts.extra_state)."""
        return {f"value_head.{name}": tensor.detach().clone() for name, tensor in self.value_head.state_dict().items()}

    def load_value_head(self, state: dict[str, torch.Tensor], where: str = "the value head") -> None:
        """Load tensors saved by value_head_state."""
        if sorted(state) != sorted(VALUE_HEAD_KEYS):
            raise CheckpointError(f"{where} must hold exactly {', '.join(VALUE_HEAD_KEYS)}, not {', '.join(state)}.")
        try:
            self.value_head.load_state_dict({key.removeprefix("value_head."): value for key, value in state.items()})
        except RuntimeError:
            raise CheckpointError(f"{where} does not fit a model of d_model {self.config.d_model}.") from None


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                           lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over right-padded completions [rows, C], backwards: δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1},
    the value after a completion's last token 0; returns (advantages, returns = advantages + values), 0 on padding."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    running = torch.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1) * mask
    return advantages, advantages + values


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """values normalised to mean 0 and (unbiased) variance 1 over the masked entries (the mean kept unless
    shift_mean), as TRL's masked_whiten; 0 off the mask."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    mean = (values * mask).sum() / count
    variance = ((values - mean) ** 2 * mask).sum() / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """The per-token KL estimate of the policy from the reference: k1 = logp − ref, k3 = exp(−k1) + k1 − 1."""
    log_ratio = logps - ref_logps
    return log_ratio if estimator == "k1" else torch.exp(-log_ratio) + log_ratio - 1


def penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [rows, C]: −kl_coef·kl on every completion token, plus the row's score at its last token."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def ppo_token_losses(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
                     old_values: torch.Tensor, returns: torch.Tensor, cliprange: float, cliprange_value: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (policy loss, value loss): max(−Aρ, −A·clip(ρ, 1 ± cliprange)), ρ = exp(logp − old), and
    ½·max((V − R)², (clip(V, V_old ± cliprange_value) − R)²)."""
    ratio = torch.exp(logps - old_logps)
    policy = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    value = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    return policy, value


def completion_values(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """The value of the state before each completion token [rows, C] (where its logits are read), 0 on padding."""
    mask = batch["completion_mask"]
    return values[:, -mask.shape[1] - 1:-1] * mask


def ppo_loss(model, batch: dict, cliprange: float = 0.2, cliprange_value: float = 0.2, vf_coef: float = 0.1,
             temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(summed policy loss + vf_coef × value loss over the completion tokens, their count, metrics summed the same
    way) of a rollout minibatch under a PolicyWithValue."""
    output = model(**model_inputs(model, batch))
    logps = completion_logprobs(output.logits, batch, temperature)
    values = completion_values(output.values, batch)
    policy, value = ppo_token_losses(logps, batch["old_logps"], batch["advantages"], values, batch["old_values"],
                                     batch["returns"], cliprange, cliprange_value)
    mask = batch["completion_mask"].float()
    count = mask.sum()
    clipped = (torch.exp(logps.detach() - batch["old_logps"]) - 1).abs() > cliprange
    metrics = {"reward": batch["rewards"].mean() * count, "policy_loss": (policy.detach() * mask).sum(),
               "value_loss": (value.detach() * mask).sum(), "clip_ratio": (clipped * mask).sum()}
    return ((policy + vf_coef * value) * mask).sum(), count, metrics


def build(context: FinetuneContext) -> MethodParts:
    """PPO's policy with a value head, its rollouts of the prompt records, and its loss."""
    params = context.params
    check_params("ppo", params, counts=("prompts_per_step", "max_new_tokens", "ppo_epochs", "minibatches"),
                 positive=("temperature", "top_p", "cliprange", "cliprange_value"),
                 non_negative=("kl_coef", "gamma", "lam", "vf_coef"))
    if params["kl_estimator"] not in KL_ESTIMATORS:
        raise ConfigError(f"method.kl_estimator of ppo must be one of {', '.join(KL_ESTIMATORS)}, "
                          f"not {params['kl_estimator']!r}.")
    policy, temperature = context.model, params["temperature"]
    check_rollout_model(policy, "ppo")
    scorer = scorer_from_params(params, context.device)
    reference = reference_logprobs(policy, context.adapter_disabled)  # before the value head joins the policy
    model = PolicyWithValue(policy)
    config = sampling_config(policy, params["max_new_tokens"], temperature, params["top_p"])

    @torch.no_grad()
    def collect(records: list[dict], seed: int) -> dict[str, torch.Tensor]:
        rollout = sample(policy, [context.encode_prompt(record["prompt"]) for record in records],
                         config.replace(seed=seed), context.tokenizer)
        batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
                 "completion_mask": rollout.completion_mask}
        scores = scorer(records, rollout)
        if params["missing_eos_penalty"] is not None:
            ran_out = torch.tensor([reason == "length" for reason in rollout.finish_reasons], device=scores.device)
            scores = scores - params["missing_eos_penalty"] * ran_out
        with evaluation_mode(model):
            output = model(**model_inputs(model, batch))
        mask = batch["completion_mask"]
        logps = completion_logprobs(output.logits, batch, temperature)
        values = completion_values(output.values, batch)
        kl = per_token_kl(logps, reference(batch, temperature), params["kl_estimator"]) * mask
        rewards = penalised_rewards(scores, kl, mask, params["kl_coef"])
        if params["whiten_rewards"]:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = generalized_advantages(rewards, values, mask, params["gamma"], params["lam"])
        if params["whiten_advantages"]:
            advantages = masked_whiten(advantages, mask)
        return {**batch, "old_logps": logps, "old_values": values, "advantages": advantages, "returns": returns,
                "rewards": scores, "kl": kl.sum(dim=1)}

    batches = RolloutBatches(context.examples, collect, params["prompts_per_step"], params["minibatches"],
                             params["ppo_epochs"], context.seed)
    loss_fn = partial(ppo_loss, cliprange=params["cliprange"], cliprange_value=params["cliprange_value"],
                      vf_coef=params["vf_coef"], temperature=temperature)
    reference_kind = "the base without its adapter" if context.adapter_disabled else "a copy of the initial model"
    notes = [f"ppo: {params['prompts_per_step']} prompts a rollout, {params['ppo_epochs']} epochs of "
             f"{params['minibatches']} minibatches, KL (kl_coef {params['kl_coef']}) to {reference_kind}"]
    return MethodParts(loss_fn=loss_fn, batches=batches, model=model, extra_state=model.value_head_state,
                       extra_state_file=VALUE_HEAD_FILE,
                       evaluate=held_out_reward(context, scorer, config), notes=notes)
