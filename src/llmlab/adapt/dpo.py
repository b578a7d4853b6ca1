"""Direct Preference Optimisation (Rafailov et al. 2023, survey §5.2) and its variants: IPO (Azar et al. 2023), the
hinge loss (SLiC, Zhao et al. 2023) and robust DPO under label noise (Chowdhury et al. 2024), each as TRL's
DPOTrainer computes it.

The reference model's log-probabilities are computed once, before training, in batched no-grad passes, and cached in
the run directory: reference_logps.safetensors holds "train" and "held_out" [pairs, 2] (chosen, rejected), row i for
the example numbered "train_index"[i] / "held_out_index"[i] in the data, under a hash of the reference weights and the
encoded data, so a resumed run reads them back and a changed model or dataset recomputes them, never reusing stale
ones (TRL #3985).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from llmlab.adapt.logprobs import response_logprobs
from llmlab.adapt.method import FinetuneContext, MethodParts
from llmlab.adapt.reward import (Pair, PairBatches, check_parameters, encode_pairs, fixed_batches, flatten_pairs,
                                 length_limit, mean_metrics, pad_id_of, positive_int)
from llmlab.data.shards import atomic_path
from llmlab.errors import CheckpointError, DataError
from llmlab.objectives.losses import unwrap
from llmlab.train.distributed import is_main

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
REFERENCE_FILE = "reference_logps.safetensors"
PARAMETERS = {
    "beta": 0.1,  # the KL penalty's weight (IPO: its τ)
    "loss_type": "sigmoid",  # one of LOSS_TYPES
    "label_smoothing": 0.0,  # robust: the assumed rate ε of flipped preference labels, in [0, 0.5)
    "batch_size": 8,  # pairs per step
    "max_length": None,  # pairs with a longer sequence are left out; None: the model's max_seq_len
    "reference": None,  # a checkpoint directory for the reference model; None: the initial model (LoRA: adapter off)
}


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, loss_type: str = "sigmoid", beta: float = 0.1,
               label_smoothing: float = 0.0, chosen_counts: torch.Tensor | None = None,
               rejected_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair loss [pairs] in float32 from the summed log-probabilities of the policy and the reference; IPO also
    needs each response's token counts."""
    chosen = policy_chosen.float() - reference_chosen.float()
    rejected = policy_rejected.float() - reference_rejected.float()
    if loss_type == "ipo":  # TRL, with the IPO authors, averages the log-ratios over each response's tokens
        delta = chosen / chosen_counts.clamp(min=1) - rejected / rejected_counts.clamp(min=1)
        return (delta - 1 / (2 * beta)).pow(2)
    logits = beta * (chosen - rejected)
    if loss_type == "sigmoid":
        return -F.logsigmoid(logits)
    if loss_type == "hinge":
        return torch.relu(1 - logits)
    if loss_type == "robust":  # the unbiased loss under preference labels flipped with probability ε
        epsilon = label_smoothing
        return (-(1 - epsilon) * F.logsigmoid(logits) + epsilon * F.logsigmoid(-logits)) / (1 - 2 * epsilon)
    raise ValueError(f"unknown DPO loss type {loss_type!r}")


def dpo_loss(model: nn.Module, batch: dict, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The Trainer loss on a pair-major batch with reference_logps: chosen and rejected through the policy in one
    forward; returns (summed loss, pairs, metrics summed per pair, named as TRL logs them: rewards/chosen,
    rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected)."""
    sums, counts = response_logprobs(model, flatten_pairs(batch))
    policy_chosen, policy_rejected = sums.chunk(2)
    reference_chosen, reference_rejected = batch["reference_logps"].float().unbind(-1)
    losses = dpo_losses(policy_chosen, policy_rejected, reference_chosen, reference_rejected, loss_type, beta,
                        label_smoothing, *counts.chunk(2))
    chosen_rewards = beta * (policy_chosen.detach() - reference_chosen)
    rejected_rewards = beta * (policy_rejected.detach() - reference_rejected)
    metrics = {
        "rewards/chosen": chosen_rewards.sum(), "rewards/rejected": rejected_rewards.sum(),
        "rewards/margins": (chosen_rewards - rejected_rewards).sum(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(), "logps/rejected": policy_rejected.detach().sum(),
    }  # fmt: skip
    return losses.sum(), torch.tensor(len(losses), device=losses.device), metrics


@torch.no_grad()
def reference_logprobs(model: nn.Module, pairs: Sequence[Pair], batch_size: int, pad_id: int) -> torch.Tensor:
    """The summed log-probabilities [pairs, 2] (chosen, rejected) of the pairs' responses under model, batched,
    without gradients and with dropout off."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    rows = []
    for batch in fixed_batches(pairs, batch_size, pad_id):
        sums, _ = response_logprobs(model, {name: value.to(device) for name, value in flatten_pairs(batch).items()})
        rows.append(sums.view(2, -1).T.cpu())
    model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, 2)


def fingerprint(weights: Iterable[tuple[str, object]], pair_sets: Sequence[Sequence[Pair]]) -> str:
    """A hash of reference weights ((name, tensor or bytes) in a fixed order) and the encoded pairs with their
    examples' indices."""
    digest = hashlib.blake2b(b"llmlab reference logps v1", digest_size=20)
    for name, value in weights:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().contiguous().cpu()
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            value = tensor.reshape(-1).view(torch.uint8).numpy()
        else:
            digest.update(name.encode())
        digest.update(value)
    for pairs in pair_sets:
        digest.update(f"pairs {len(pairs)}".encode())
        for pair in pairs:
            digest.update(array("q", [pair.index]).tobytes())
            for part in (*pair.chosen, *pair.rejected):
                digest.update(array("q", [len(part), *part]).tobytes())
    return digest.hexdigest()


def directory_weights(directory: Path, chunk: int = 1 << 24) -> Iterable[tuple[str, bytes]]:
    """(name, bytes) pieces of every file of a checkpoint directory, in name order, to hash it without building a
    model or holding a whole file."""
    for file in sorted(path for path in directory.iterdir() if path.is_file()):
        with open(file, "rb") as handle:
            while piece := handle.read(chunk):
                yield file.name, piece


def model_weights(model: nn.Module, frozen_only: bool) -> list[tuple[str, torch.Tensor]]:
    """The tensors a model's outputs depend on: its parameters (only frozen ones when an adapter is switched off for
    the reference) and buffers."""
    parameters = [(name, p) for name, p in model.named_parameters() if not (frozen_only and p.requires_grad)]
    return parameters + list(model.named_buffers())


def cached_reference(path: Path, key: str, compute: Callable[[], dict[str, torch.Tensor]]
                     ) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors in path when it was written under key, else compute()'s, written there (rank 0, atomically);
    returns them and what happened: "reused", "computed" or "recomputed" (the file was for other weights or data)."""
    status = "computed"
    if path.is_file():
        try:
            with safe_open(path, "pt") as handle:
                if (handle.metadata() or {}).get("key") == key:
                    return {name: handle.get_tensor(name) for name in handle.keys()}, "reused"
        except (OSError, SafetensorError):
            pass  # unreadable: recomputed like a stale one
        status = "recomputed"
    tensors = compute()
    if is_main():
        with atomic_path(path) as staging:
            save_file({name: value.contiguous() for name, value in tensors.items()}, staging, metadata={"key": key})
    return tensors, status


def reference_source(context: FinetuneContext, reference: str | None):
    """(what to hash, a function loading the reference model, the context it scores under) for the run's reference:
    a checkpoint directory, the model with its adapter off, or the model as it is before training."""
    if reference is not None:
        directory = Path(reference)
        if not directory.is_dir():
            raise CheckpointError(f"method.reference {reference} is not a checkpoint directory.")

        def load_reference():
            from llmlab.api import load  # the one loader of llmlab and Hugging Face directories

            model = load(directory, device=context.device)
            vocab = unwrap(context.model).config.vocab_size
            if model.config.vocab_size != vocab:
                raise CheckpointError(f"the reference model {directory} has {model.config.vocab_size} tokens in its "
                                      f"vocabulary, the model trained {vocab}.")
            return model
        return directory_weights(directory), load_reference, contextlib.nullcontext
    frozen_only = context.adapter_disabled is not None
    scope = context.adapter_disabled or contextlib.nullcontext
    return model_weights(context.model, frozen_only), lambda: context.model, scope


def build(context: FinetuneContext) -> MethodParts:
    """DPO on context.model; reference log-probabilities computed here (before any training step, so context.model
    is still the initial model) or read from the run directory's cache."""
    params = {**PARAMETERS, **context.params}
    check_parameters(params, {
        "beta": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a positive number"),
        "loss_type": (lambda v: v in LOSS_TYPES, f"one of {', '.join(LOSS_TYPES)}"),
        "label_smoothing": (lambda v: isinstance(v, (int, float)) and 0 <= v < 0.5
                            and (v == 0 or params["loss_type"] == "robust"),
                            "0 unless loss_type is robust, and below 0.5"),
        "batch_size": (positive_int, "a positive integer"),
        "max_length": (lambda v: v is None or positive_int(v), "null or a positive integer"),
        "reference": (lambda v: v is None or isinstance(v, str), "null or a checkpoint directory"),
    })  # fmt: skip
    limit, batch_size = length_limit(context, params["max_length"]), params["batch_size"]
    pairs, dropped = encode_pairs(context, context.examples, limit)
    held_out, held_dropped = encode_pairs(context, context.held_out, limit)
    if not pairs:
        raise DataError(f"no preference pair is left to train on (of {len(context.examples)}, {dropped} are longer "
                        f"than {limit} tokens).")
    pad_id = pad_id_of(context.model)
    weights, load_reference, scope = reference_source(context, params["reference"])
    path = Path(context.run_dir) / REFERENCE_FILE

    def compute() -> dict[str, torch.Tensor]:
        reference, tensors = load_reference(), {}
        with scope():
            for name, subset in (("train", pairs), ("held_out", held_out)):
                tensors[name] = reference_logprobs(reference, subset, batch_size, pad_id)
                tensors[f"{name}_index"] = torch.tensor([pair.index for pair in subset], dtype=torch.long)
        return tensors

    started = time.perf_counter()
    tensors, status = cached_reference(path, fingerprint(weights, (pairs, held_out)), compute)
    for name, subset in (("train", pairs), ("held_out", held_out)):
        for pair, logps in zip(subset, tensors[name].tolist()):
            pair.reference = tuple(logps)
    notes = [f"DPO ({params['loss_type']}, beta {params['beta']}): {len(pairs)} training pairs, "
             f"{len(held_out)} held-out"]
    notes.append({"reused": f"reference log-probabilities reused from {path}",
                  "computed": f"reference log-probabilities computed in {time.perf_counter() - started:.1f}s and "
                              f"cached in {path}",
                  "recomputed": f"{path} was for other reference weights or data: reference log-probabilities "
                                "recomputed"}[status])  # fmt: skip
    if dropped or held_dropped:
        notes.append(f"left out {dropped} training and {held_dropped} held-out pairs longer than {limit} tokens")
    loss_fn = partial(dpo_loss, beta=params["beta"], loss_type=params["loss_type"],
                      label_smoothing=params["label_smoothing"])
    held_batches = fixed_batches(held_out, batch_size, pad_id)
    return MethodParts(
        loss_fn=loss_fn, batches=PairBatches(pairs, batch_size, pad_id, context.seed), held_out=held_batches or None,
        evaluate=(lambda module: mean_metrics(loss_fn, module, held_batches)) if held_batches else None, notes=notes,
    )  # fmt: skip
