"""The reward model (InstructGPT's RM, survey §5.2): a scalar head on the final hidden state of any decoder or encoder,
trained with the Bradley–Terry loss on preference pairs; and the preference-pair data that DPO shares.

A preference batch is pair-major so that a pair's two rows stay together through micro-batches and ranks:
``input_ids`` / ``attention_mask`` / ``labels`` are [pairs, 2, length] (chosen, then rejected) and ``margin`` is
[pairs]; `flatten_pairs` turns them into one [2·pairs, length] batch (all chosen rows, then all rejected) for a single
forward.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from llmlab.adapt.logprobs import padded_batch
from llmlab.adapt.method import FinetuneContext, MethodParts
from llmlab.errors import CheckpointError, ConfigError, DataError
from llmlab.model.checkpoint import atomic_directory, read_safetensors, save_llmlab
from llmlab.objectives.losses import LossFunction, unwrap
from llmlab.train.data import StepIndexed, step_generator
from llmlab.train.distributed import rank, world_size

REWARD_HEAD_FILE = "reward_head.safetensors"
PARAMETERS = {
    "batch_size": 8,  # pairs per step
    "max_length": None,  # pairs with a longer sequence are left out (as TRL's RewardTrainer filters); None: max_seq_len
    "center_rewards_coefficient": None,  # Eisenstein et al.'s centering: + coef · (r_chosen + r_rejected)²
}
UNREAD_MODULES = ("head", "head_dense", "head_norm", "proj_out", "pooler")  # the LM head's path, which a score skips


class RewardModel(nn.Module):
    """An llmlab Model's final hidden states and a linear scalar head read at each row's last non-pad token; the
    LM head (and an encoder-decoder's decoder: its encoder reads the whole sequence) is unused, so frozen."""

    def __init__(self, model: nn.Module, score: nn.Linear | None = None):
        super().__init__()
        self.model, self.config = model, model.config
        if score is None:
            score = nn.Linear(model.config.d_model, 1, bias=False)
            nn.init.normal_(score.weight, std=model.config.init_std)
        self.score = score
        unread = [getattr(model, name) for name in UNREAD_MODULES if hasattr(model, name)]
        if self.config.arch == "encoder_decoder":
            unread.append(model.decoder)
        shared = {id(parameter) for parameter in model.embed.parameters()}  # a tied LM head is the embedding
        for module in unread:
            for parameter in module.parameters():
                if id(parameter) not in shared:
                    parameter.requires_grad_(False)
        self.score.to(device=next(model.parameters()).device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [batch] in float32 of input_ids' rows (right-padded, decoders either side; mask 1 = token)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder = self.config.arch in ("encoder", "encoder_decoder")
        inputs = self.model.prepare(input_ids, attention_mask, encoder=encoder,
                                    check_ids=not self.training and not torch.compiler.is_compiling())
        hidden, _ = self.model.hidden(inputs)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (positions * attention_mask.bool()).amax(dim=-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.score(hidden[rows, last].to(self.score.weight.dtype)).squeeze(-1).float()


def save_reward_model(model: RewardModel, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the reward model: its base model's llmlab checkpoint (with the tokenizer) plus reward_head.safetensors,
    atomically."""
    with atomic_directory(directory, overwrite) as staging:
        save_llmlab(model.model, staging, metadata={"method": "reward"})
        save_file(head_state(model), staging / REWARD_HEAD_FILE, metadata={"format": "pt"})
    return Path(directory)


def head_state(model: RewardModel) -> dict[str, torch.Tensor]:
    """The score head's tensors as reward_head.safetensors stores them."""
    return {"score.weight": model.score.weight.detach().contiguous()}


def load_reward_model(path: str | os.PathLike, device=None) -> RewardModel:
    """Read a reward model written by save_reward_model (or any checkpoint directory with reward_head.safetensors)."""
    from llmlab.api import load  # the one loader of llmlab and Hugging Face directories

    path = Path(path)
    if not (path / REWARD_HEAD_FILE).is_file():
        raise CheckpointError(f"{path} has no {REWARD_HEAD_FILE}, so it is not a reward model.")
    model = load(path, device=device)
    state = read_safetensors(path / REWARD_HEAD_FILE)
    weight = state.get("score.weight")
    if weight is None or tuple(weight.shape) != (1, model.config.d_model) or len(state) != 1:
        raise CheckpointError(f"{path / REWARD_HEAD_FILE} must hold exactly score.weight of shape "
                              f"(1, {model.config.d_model}).")
    score = nn.Linear(model.config.d_model, 1, bias=False, device=model.device, dtype=weight.dtype)
    with torch.no_grad():
        score.weight.copy_(weight)
    return RewardModel(model, score).eval()


# --- preference pairs ----------------------------------------------------------------------------------------------

Encoded = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class Pair:
    """One encoded preference pair: chosen and rejected (input_ids, labels), the margin, its example's index in the
    data, and (DPO) the reference model's summed log-probabilities (chosen, rejected)."""

    chosen: Encoded
    rejected: Encoded
    margin: float = 0.0
    index: int = 0
    reference: tuple[float, float] | None = None


def pad_id_of(model: nn.Module) -> int:
    """A token id to pad with (masked out, so any id of the vocabulary does): pad, else EOS, else 0."""
    config = unwrap(model).config
    for token in (config.pad_token_id, config.eos_token_id):
        if token is not None:
            return token
    return 0


def reward_sequence(ids: list[int], labels: list[int], arch: str) -> Encoded:
    """What a reward model reads of an encoded example: the whole sequence (an encoder-decoder's prompt, then its
    labelled response), with no labels."""
    if arch == "encoder_decoder":
        ids = ids + [label for label in labels if label >= 0]
    return ids, []


def encode_pairs(context: FinetuneContext, examples: Sequence[dict], max_length: int,
                 shape: Callable[[list[int], list[int]], Encoded] | None = None) -> tuple[list[Pair], int]:
    """The examples' pairs encoded by context.encode (then shape), without those with a sequence longer than
    max_length; returns them and how many were left out. A pair whose chosen and rejected are equal is a DataError."""
    pairs, dropped = [], 0
    for index, example in enumerate(examples):
        missing = [name for name in ("prompt", "chosen", "rejected") if name not in example]
        if missing:
            raise DataError(f"preference example {index} lacks the field(s) {', '.join(missing)}.")
        if example["chosen"] == example["rejected"]:
            raise DataError(f"preference example {index} has the same chosen and rejected response "
                            f"({str(example['chosen'])[:40]!r}), so it prefers nothing.")
        try:
            margin = float(example.get("margin", 0.0))
        except (TypeError, ValueError):
            message = f"preference example {index} has a margin {example['margin']!r} that is not a number."
            raise DataError(message) from None
        chosen, rejected = (context.encode(example["prompt"], example[name]) for name in ("chosen", "rejected"))
        if shape is not None:
            chosen, rejected = shape(*chosen), shape(*rejected)
        if max(len(part) for sequence in (chosen, rejected) for part in sequence) > max_length:
            dropped += 1
            continue
        pairs.append(Pair((list(chosen[0]), list(chosen[1])), (list(rejected[0]), list(rejected[1])), margin, index))
    return pairs, dropped


def collate_pairs(pairs: Sequence[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """A pair-major batch: input_ids, attention_mask, labels [pairs, 2, length], margin [pairs] and, when the pairs
    have them, reference_logps [pairs, 2]."""
    flat = padded_batch([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id)
    batch = {name: value.view(2, len(pairs), -1).transpose(0, 1).contiguous() for name, value in flat.items()}
    batch["margin"] = torch.tensor([pair.margin for pair in pairs], dtype=torch.float32)
    if pairs[0].reference is not None:
        batch["reference_logps"] = torch.tensor([pair.reference for pair in pairs], dtype=torch.float32)
    return batch


def flatten_pairs(batch: dict) -> dict[str, torch.Tensor]:
    """The [pairs, 2, length] tensors of a pair-major batch as [2·pairs, length]: every chosen row, then every
    rejected row (the same order TRL's DataCollatorForPreference uses)."""
    return {name: batch[name].transpose(0, 1).flatten(0, 1) for name in ("input_ids", "attention_mask", "labels")
            if name in batch}


class PairBatches(StepIndexed):
    """Step-indexed batches of pairs: step s takes positions [s·B, (s+1)·B) of an endless stream that visits the
    pairs in a new order every epoch (seeded by (seed, epoch)), so a resumed run continues exactly; this rank keeps
    rows [rank·B/W, (rank+1)·B/W) of each step."""

    def __init__(self, pairs: Sequence[Pair], batch_size: int, pad_id: int, seed: int = 0):
        self.world, self.rank = world_size(), rank()
        if batch_size % self.world:
            raise ConfigError(f"method.batch_size {batch_size} must be a multiple of the {self.world} processes.")
        self.pairs, self.batch_size, self.pad_id, self.seed = list(pairs), batch_size, pad_id, seed
        self.step, self.order = 0, (None, None)

    def _pair(self, position: int) -> Pair:
        epoch, offset = divmod(position, len(self.pairs))
        if self.order[0] != epoch:
            self.order = (epoch, torch.randperm(len(self.pairs), generator=step_generator(self.seed, epoch)))
        return self.pairs[int(self.order[1][offset])]

    def batch(self, step: int) -> dict:
        """This rank's rows of step's batch."""
        share = self.batch_size // self.world
        start = step * self.batch_size + self.rank * share
        return collate_pairs([self._pair(position) for position in range(start, start + share)], self.pad_id)


def fixed_batches(pairs: Sequence[Pair], batch_size: int, pad_id: int) -> list[dict]:
    """The pairs in order, batch_size at a time (held-out evaluation)."""
    return [collate_pairs(pairs[start:start + batch_size], pad_id) for start in range(0, len(pairs), batch_size)]


@torch.no_grad()
def mean_metrics(loss_fn: LossFunction, model: nn.Module, batches: Sequence[dict]) -> dict[str, float]:
    """Each metric of loss_fn (summed per pair) over all batches divided by their total count, with dropout off."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    totals, count = {}, 0.0
    for batch in batches:
        _, batch_count, metrics = loss_fn(model, {name: value.to(device) for name, value in batch.items()})
        count += float(batch_count)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    model.train(was_training)
    return {name: total / count for name, total in totals.items()} if count else {}


def check_parameters(params: dict, checks: dict[str, tuple[Callable[[object], bool], str]]) -> None:
    """Raise ConfigError naming the first method parameter that fails its check (a predicate and what it wants)."""
    for name, (valid, wanted) in checks.items():
        value = params.get(name)
        if not valid(value):
            raise ConfigError(f"method.{name} must be {wanted}, not {value!r}.")


def positive_int(value) -> bool:
    """Whether value is an integer of at least 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def length_limit(context: FinetuneContext, max_length: int | None) -> int:
    """The longest sequence kept: method.max_length, else the model's context."""
    return max_length if max_length is not None else unwrap(context.model).config.max_seq_len


# --- the Bradley–Terry loss ----------------------------------------------------------------------------------------

def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                         center_rewards_coefficient: float | None = None) -> torch.Tensor:
    """Per pair: −log σ(r_chosen − r_rejected − margin), plus coef · (r_chosen + r_rejected)² when centering."""
    losses = -F.logsigmoid(chosen.float() - rejected.float() - margin)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen.float() + rejected.float()).pow(2)
    return losses


def reward_loss(model: nn.Module, batch: dict, center_rewards_coefficient: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The Trainer loss of a reward model on a pair-major batch: (summed Bradley–Terry loss, pairs, metrics summed
    per pair: accuracy (chosen scored above rejected), margin (r_chosen − r_rejected), mean_reward)."""
    flat = flatten_pairs(batch)
    chosen, rejected = model(flat["input_ids"], flat["attention_mask"]).chunk(2)
    losses = bradley_terry_losses(chosen, rejected, batch["margin"], center_rewards_coefficient)
    detached = chosen.detach(), rejected.detach()
    metrics = {"accuracy": (detached[0] > detached[1]).float().sum(), "margin": (detached[0] - detached[1]).sum(),
               "mean_reward": ((detached[0] + detached[1]) / 2).sum()}
    return losses.sum(), torch.tensor(len(chosen), device=chosen.device), metrics


def build(context: FinetuneContext) -> MethodParts:
    """Train a RewardModel on context.model with the Bradley–Terry loss; held-out pairwise accuracy as evaluate."""
    params = {**PARAMETERS, **context.params}
    check_parameters(params, {
        "batch_size": (positive_int, "a positive integer"),
        "max_length": (lambda v: v is None or positive_int(v), "null or a positive integer"),
        "center_rewards_coefficient": (lambda v: v is None or (isinstance(v, (int, float)) and v >= 0),
                                       "null or a non-negative number"),
    })  # fmt: skip
    model = RewardModel(context.model)
    limit, arch = length_limit(context, params["max_length"]), model.config.arch
    shape = partial(reward_sequence, arch=arch)
    pairs, dropped = encode_pairs(context, context.examples, limit, shape)
    held_out, held_dropped = encode_pairs(context, context.held_out, limit, shape)
    if not pairs:
        raise DataError(f"no preference pair is left to train on (of {len(context.examples)}, {dropped} are longer "
                        f"than {limit} tokens).")
    pad_id = pad_id_of(model.model)
    loss_fn = partial(reward_loss, center_rewards_coefficient=params["center_rewards_coefficient"])
    held_batches = fixed_batches(held_out, params["batch_size"], pad_id)
    notes = [f"reward model: {len(pairs)} training pairs, {len(held_out)} held-out"]
    if dropped or held_dropped:
        notes.append(f"left out {dropped} training and {held_dropped} held-out pairs longer than {limit} tokens")
    return MethodParts(
        loss_fn=loss_fn, batches=PairBatches(pairs, params["batch_size"], pad_id, context.seed),
        held_out=held_batches or None, model=model,
        evaluate=(lambda module: mean_metrics(loss_fn, module, held_batches)) if held_batches else None,
        extra_state=lambda: head_state(model), extra_state_file=REWARD_HEAD_FILE, notes=notes,
    )  # fmt: skip
