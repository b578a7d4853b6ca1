"""Rewards for GRPO and PPO (survey §5.2): ready-made reward functions by name, a user's `module.path:function`, and
the score of each completion of a rollout under them and under a reward model.

A reward function is called as ``function(prompts, completions, **columns)`` — the prompts (text or messages) and
completion texts of a rollout's rows, and each other column of the prompt records, one value per row — and returns one
float per completion, as TRL's GRPOTrainer calls them.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence

import torch

from llmlab.adapt.rollout import Rollout, sample
from llmlab.errors import ConfigError, DataError
from llmlab.infer.config import GenerationConfig

RewardFunction = Callable[..., Sequence[float]]
ANSWER_COLUMNS = ("answer", "output", "response", "completion")  # where the gold answer may sit, in this order


def _gold_answers(columns: dict, name: str) -> list:
    for column in ANSWER_COLUMNS:
        if columns.get(column) is not None:
            return columns[column]
    raise DataError(f"The reward {name} needs the gold answer in a column named one of {', '.join(ANSWER_COLUMNS)}.")


def exact_match(prompts, completions: Sequence[str], **columns) -> list[float]:
    """1.0 where the completion's last number (lm-eval's GSM8K flexible extraction) equals the gold answer's number."""
    from llmlab.evaluate.answers import answers_match, extract_flexible

    golds = _gold_answers(columns, "exact_match")
    return [answers_match(extract_flexible(text), str(gold), numeric=True) for text, gold in zip(completions, golds)]


def strict_match(prompts, completions: Sequence[str], **columns) -> list[float]:
    """1.0 where the number after the completion's first "#### " (lm-eval's GSM8K strict match) equals the gold one."""
    from llmlab.evaluate.answers import answers_match, extract_strict

    golds = _gold_answers(columns, "strict_match")
    return [answers_match(extract_strict(text), str(gold), numeric=True) for text, gold in zip(completions, golds)]


def exact_text(prompts, completions: Sequence[str], **columns) -> list[float]:
    """1.0 where the completion, stripped of surrounding whitespace, is the gold answer."""
    golds = _gold_answers(columns, "exact_text")
    return [float(text.strip() == str(gold).strip()) for text, gold in zip(completions, golds)]


REWARD_FUNCTIONS: dict[str, RewardFunction] = {"exact_match": exact_match, "strict_match": strict_match,
                                               "exact_text": exact_text}


def load_reward_function(spec: str | RewardFunction) -> RewardFunction:
    """The reward function a recipe names: one of REWARD_FUNCTIONS, `module.path:function`, or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"method.reward must name a reward function or be `module.path:function`, not {spec!r}.")
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[spec]
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"method.reward {spec!r} is neither one of {', '.join(REWARD_FUNCTIONS)} nor "
                          f"`module.path:function`.")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ConfigError(f"method.reward {spec!r}: the module {module_name} cannot be imported ({error}).") from None
    except AttributeError:
        raise ConfigError(f"method.reward {spec!r}: the module {module_name} has no {attribute}.") from None
    if not callable(function):
        raise ConfigError(f"method.reward {spec!r} is not a function.")
    return function


class Scorer:
    """The reward of each completion of a rollout: the weighted sum of the reward functions' values, plus the reward
    model's score of the whole sequence (prompt and completion)."""

    def __init__(self, functions: Sequence[RewardFunction | str] = (), weights: Sequence[float] | None = None,
                 reward_model: torch.nn.Module | None = None):
        self.functions = [load_reward_function(function) for function in functions]
        weights = [1.0] * len(self.functions) if weights is None else list(weights)
        if len(weights) != len(self.functions):
            raise ConfigError(f"method.reward_weights has {len(weights)} weights for {len(self.functions)} reward "
                              f"functions.")
        if not self.functions and reward_model is None:
            raise ConfigError("method.reward (reward functions) or method.reward_model (a reward model directory) "
                              "must be given.")
        self.weights, self.reward_model = weights, reward_model

    @torch.no_grad()
    def __call__(self, records: Sequence[dict], rollout: Rollout) -> torch.Tensor:
        """Rewards [rows] (float32) of the rollout's rows, records[i] being row i's prompt record."""
        device = rollout.completion_ids.device
        total = torch.zeros(len(records), device=device)
        if self.functions:
            if rollout.texts is None:
                raise ConfigError("Reward functions score completion texts: the model needs a tokenizer.")
            prompts = [record["prompt"] for record in records]
            columns = {name: [record.get(name) for record in records] for name in records[0] if name != "prompt"}
            for function, weight in zip(self.functions, self.weights):
                values = list(function(prompts, rollout.texts, **columns))
                try:
                    values = [float(value) for value in values]
                except (TypeError, ValueError):
                    values = [math.nan]
                if len(values) != len(records) or not all(map(math.isfinite, values)):
                    name = getattr(function, "__name__", repr(function))
                    raise DataError(f"The reward function {name} must return one finite number for each of the "
                                    f"{len(records)} completions.")
                total += weight * torch.tensor(values, dtype=torch.float32, device=device)
        if self.reward_model is not None:
            ids, mask = rollout.right_padded()
            total += self.reward_model(ids, mask).float()
        return total


def scorer_from_params(params: dict, device: torch.device | None = None) -> Scorer:
    """The Scorer of a method's `reward`, `reward_weights` and `reward_model` parameters (a reward model directory,
    loaded with llmlab.adapt.reward.load_reward_model, frozen)."""
    functions = params.get("reward") or []
    functions = [functions] if isinstance(functions, str) or callable(functions) else list(functions)
    reward_model = params.get("reward_model")
    if isinstance(reward_model, (str, os.PathLike)):
        from llmlab.adapt.reward import load_reward_model  # the reward-model method's own loader

        reward_model = load_reward_model(reward_model, device=device)
    if reward_model is not None:
        reward_model.eval().requires_grad_(False)
    return Scorer(functions, params.get("reward_weights"), reward_model)


def mean_reward(model, records: Sequence[dict], encode_prompt: Callable, scorer: Scorer, config: GenerationConfig,
                tokenizer=None, batch_size: int = 16) -> float:
    """The mean reward of the model's completions (config.n per prompt, e.g. greedy) of the records' prompts."""
    total = 0.0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        rollout = sample(model, [encode_prompt(record["prompt"]) for record in chunk], config, tokenizer)
        total += float(scorer([record for record in chunk for _ in range(config.n)], rollout).sum())
    return total / (len(records) * config.n)


def held_out_reward(context, scorer: Scorer, config: GenerationConfig) -> Callable | None:
    """MethodParts.evaluate for PPO and GRPO: {"reward": the mean reward of greedy completions of the held-out
    prompts} for the trained model (a policy with a value head: its policy), or None without held-out prompts."""
    if not context.held_out:
        return None
    greedy = config.replace(do_sample=False, n=1)

    def evaluate(model) -> dict[str, float]:
        policy = getattr(model, "policy", model)
        return {"reward": mean_reward(policy, context.held_out, context.encode_prompt, scorer, greedy,
                                      context.tokenizer)}
    return evaluate
