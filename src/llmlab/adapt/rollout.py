"""Rollouts for PPO and GRPO (survey §5.2): completions of a batch of prompts sampled with llmlab.infer.generate, laid
out as the tensors their losses need, the per-token log-probabilities of those completions under a model, the frozen
reference, and the Trainer's batch iterator that samples a rollout and then yields its rows as minibatches.

A rollout's rows are prompt-major (config.n completions of each prompt in a row); each row is its prompt, padded on
the left, followed by its completion, padded on the right, so that every completion starts at the same column.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from llmlab.errors import ConfigError, DataError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import generate, left_padded
from llmlab.objectives.losses import IGNORE_INDEX, token_logprobs, unwrap

ROLLOUT_ARCHS = ("decoder", "prefix_decoder")


@dataclass
class Rollout:
    """Sampled completions: prompts [rows, P] padded on the left, completions [rows, C] padded on the right."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor  # 1 on every generated token, the EOS that ended it included
    texts: list[str] | None  # the completions decoded, when there is a tokenizer
    finish_reasons: list[str]  # "stop" (an EOS) or "length"

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and completion of each row [rows, P + C]."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """1 on the real tokens of input_ids."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def right_padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of each row's prompt and completion with all the padding at the end (for reward models)."""
        mask = self.attention_mask
        order = torch.argsort(1 - mask, dim=1, stable=True)  # real tokens first, in their order
        return self.input_ids.gather(1, order), mask.gather(1, order)


def check_rollout_model(model, method: str) -> None:
    """Refuse a model that cannot be rolled out: only decoders (causal or prefix) are supported."""
    arch = unwrap(model).config.arch
    if arch not in ROLLOUT_ARCHS:
        raise ConfigError(f"method {method} needs a decoder or prefix-decoder model, not an {arch} model.")


def sampling_config(model, max_new_tokens: int, temperature: float, top_p: float, n: int = 1) -> GenerationConfig:
    """Sampling at temperature with nucleus top_p, n completions per prompt, ending at the checkpoint's EOS ids."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                            n=n, eos_token_id=eos)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode under no_grad, its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def sample(model, prompts: list[list[int]], config: GenerationConfig, tokenizer=None) -> Rollout:
    """config.n completions of each prompt (token ids) from generate, in eval mode (the model's mode restored).

    With config.seed, every row draws from one generator seeded with it, the caller's random state untouched
    (generate's own seeds give sample j of every prompt the same noise, which ties the rows of a batch together)."""
    seed, config = config.seed, config.replace(seed=None)
    devices = list(range(torch.cuda.device_count())) if model.device.type == "cuda" else []
    with evaluation_mode(model), torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        result = generate(model, prompts, config, tokenizer=tokenizer)
    device, pad = model.device, model.config.pad_token_id or 0  # padding is masked: any id in the vocabulary does
    prompt_ids, prompt_mask = left_padded([prompt for prompt in prompts for _ in range(config.n)], pad, device)
    width = max(map(len, result.tokens))
    completion_ids = torch.tensor([tokens + [pad] * (width - len(tokens)) for tokens in result.tokens], device=device)
    completion_mask = torch.tensor([[1] * len(tokens) + [0] * (width - len(tokens)) for tokens in result.tokens],
                                   device=device)
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, result.text, result.finish_reasons)


def model_inputs(model, batch: dict) -> dict:
    """The model's inputs for a batch of rows (input_ids, attention_mask, completion_mask): a prefix decoder's
    prompt is its bidirectional prefix, as in generation."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if unwrap(model).config.arch == "prefix_decoder":
        prompt_width = batch["input_ids"].shape[1] - batch["completion_mask"].shape[1]
        inputs["prefix_lengths"] = torch.full_like(batch["input_ids"][:, 0], prompt_width)
    return inputs


def completion_logprobs(logits: torch.Tensor, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log p of each completion token [rows, C] (0 on padding) from the logits of whole rows [rows, P + C, vocab],
    the logits divided by the sampling temperature as the tokens were drawn."""
    mask = batch["completion_mask"]
    width = mask.shape[1]
    targets = batch["input_ids"][:, -width:].masked_fill(mask == 0, IGNORE_INDEX)
    return token_logprobs(logits[:, -width - 1:-1] / temperature, targets)


def sequence_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probabilities [rows, C] of a batch's completions under a language model."""
    return completion_logprobs(model(**model_inputs(model, batch)).logits, batch, temperature)


def evaluation_logprobs(model: nn.Module, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """sequence_logprobs in evaluation_mode, as a rollout records them."""
    with evaluation_mode(model):
        return sequence_logprobs(model, batch, temperature)


def reference_logprobs(policy: nn.Module, adapter_disabled: Callable | None = None
                       ) -> Callable[[dict, float], torch.Tensor]:
    """The reference's evaluation_logprobs: the policy with its adapter switched off when an adapter is trained, else
    a frozen copy of the policy as it is now (so build it before a resumed run loads its trained weights)."""
    if adapter_disabled is not None:
        def with_adapter_off(batch: dict, temperature: float) -> torch.Tensor:
            with adapter_disabled():
                return evaluation_logprobs(policy, batch, temperature)
        return with_adapter_off
    frozen = copy.deepcopy(policy).eval().requires_grad_(False)
    return lambda batch, temperature: evaluation_logprobs(frozen, batch, temperature)


class RolloutBatches:
    """The Trainer's batches for PPO and GRPO.

    Each rollout takes the next prompts_per_rollout prompts (a fresh random order of the examples each pass) and
    calls collect(records, seed) — the method's rollout: sample, score, log-probabilities, advantages — for a dict
    of row tensors; its rows are then yielded as `minibatches` minibatches, `epochs` times in fresh random orders,
    before the next rollout. All randomness comes from one generator seeded with seed; state_dict holds it, the
    prompt order and the rollout being consumed, so that a resumed run equals an uninterrupted one.
    """

    def __init__(self, examples: list[dict], collect: Callable[[list[dict], int], dict[str, torch.Tensor]],
                 prompts_per_rollout: int, minibatches: int = 1, epochs: int = 1, seed: int = 0):
        if not examples:
            raise DataError("The data holds no prompts to roll out.")
        self.examples, self.collect = examples, collect
        self.prompts_per_rollout, self.minibatches, self.epochs = prompts_per_rollout, minibatches, epochs
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0
        self.buffer: dict[str, torch.Tensor] | None = None
        self.queue: list[torch.Tensor] = []  # the row indices of the minibatches still to yield from the buffer
        self.history: list[float] = []  # the mean reward of each rollout so far

    def __iter__(self) -> RolloutBatches:
        return self

    def _next_records(self) -> list[dict]:
        picked = []
        while len(picked) < self.prompts_per_rollout:
            if self.position == len(self.order):
                self.order, self.position = torch.randperm(len(self.examples), generator=self.generator).tolist(), 0
            picked.append(self.examples[self.order[self.position]])
            self.position += 1
        return picked

    def __next__(self) -> dict[str, torch.Tensor]:
        if not self.queue:
            records = self._next_records()
            self.buffer = self.collect(records, int(torch.randint(2**31 - 1, (), generator=self.generator)))
            rows = self.buffer["input_ids"].shape[0]
            if rows < self.minibatches:
                raise ConfigError(f"method.minibatches ({self.minibatches}) exceeds the {rows} rows of a rollout.")
            for _ in range(self.epochs):
                self.queue += list(torch.randperm(rows, generator=self.generator).tensor_split(self.minibatches))
            self.history.append(float(self.buffer["rewards"].float().mean()))
        rows = self.queue.pop(0).to(self.buffer["input_ids"].device)
        return {name: value[rows] for name, value in self.buffer.items()}

    def state_dict(self) -> dict:
        """Where the iterator stands: its generator, the prompt order, the current rollout and what is left of it."""
        return {"generator": self.generator.get_state(), "order": list(self.order), "position": self.position,
                "buffer": self.buffer, "queue": list(self.queue), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict."""
        self.generator.set_state(state["generator"])
        self.order, self.position = list(state["order"]), int(state["position"])
        self.buffer, self.queue, self.history = state["buffer"], list(state["queue"]), list(state["history"])


def check_params(method: str, params: dict, counts: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming the first method field out of range: counts are integers of at least 1."""
    for name in counts:
        value = params[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"method.{name} of {method} must be an integer of at least 1, not {value!r}.")
    for name, low_open in [(name, True) for name in positive] + [(name, False) for name in non_negative]:
        value = params[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < 0 or (low_open and value == 0):
            kind = "positive" if low_open else "at least 0"
            raise ConfigError(f"method.{name} of {method} must be a {kind} number, not {value!r}.")
