"""What every fine-tuning method hands the Trainer, and what `llmlab finetune` hands every method.

A method lives in its own module, ``llmlab.adapt.<name>`` (``sft``, ``reward``, ``dpo``, ``ppo``, ``grpo``), which
defines ``PARAMETERS`` (the ``method:`` fields a recipe may set, with their defaults) and
``build(context: FinetuneContext) -> MethodParts``. `llmlab finetune` loads the model, adapter and data, builds the
context, calls ``build`` and trains ``parts.model`` on ``parts.batches`` with ``parts.loss_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.objectives.losses import LossFunction

# A prompt as data gives it: plain text, or chat messages ({role, content} dicts) ending before the reply.
Prompt = str | Sequence[dict]


@dataclass
class FinetuneContext:
    """Everything a method needs, prepared by `llmlab finetune` from the recipe.

    examples / held_out are normalised records of the recipe's data format:
      sft:         {"prompt": Prompt, "response": str}
      preference:  {"prompt": Prompt, "chosen": str, "rejected": str}
      prompts:     {"prompt": Prompt, **other columns}   (for PPO / GRPO reward functions)
    encode(prompt, response) tokenises prompt (rendered by the recipe's template) and response separately and
    returns (input_ids, labels): labels are IGNORE_INDEX on the prompt and the response's ids followed by the
    end-of-turn / EOS id, which is always labelled. encode_prompt(prompt) gives the ids to generate from.
    """

    model: nn.Module
    tokenizer: Any  # tokenizers.Tokenizer
    params: dict  # the recipe's method: section, PARAMETERS' defaults filled in
    examples: list[dict]
    held_out: list[dict]
    encode: Callable[[Prompt, str], tuple[list[int], list[int]]]
    encode_prompt: Callable[[Prompt], list[int]]
    train: Any  # llmlab.train.loop.TrainConfig
    run_dir: Path
    device: torch.device
    seed: int
    # the model with its LoRA adapter switched off (a context manager factory), when an adapter is trained
    adapter_disabled: Callable[[], Any] | None = None
    model_directory: Path | None = None  # where model came from (a reference copy can be loaded from it)


@dataclass
class MethodParts:
    """What the Trainer runs: loss_fn over batches (an iterator with state_dict / load_state_dict for resume)."""

    loss_fn: LossFunction
    batches: Iterator[dict]
    held_out: list[dict] | None = None  # batches for the Trainer's held-out loss
    model: nn.Module | None = None  # the module to train when it is not context.model (e.g. with a value head)
    # extra held-out metrics after training (e.g. the reward model's pairwise accuracy), written to the report
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    # tensors the method writes into the final checkpoint beside the model (e.g. a value head), in extra_state_file
    extra_state: Callable[[], dict[str, torch.Tensor]] | None = None
    extra_state_file: str = "method_state.safetensors"
    notes: list[str] = field(default_factory=list)  # lines printed before training (e.g. cached reference)
