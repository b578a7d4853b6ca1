"""The loss functions every training method shares (survey §4.2.3, §5): the model computes none of them.

A Trainer loss function is called as ``loss_fn(model, batch)`` and returns ``(summed loss, token count, metrics)``:
the loss summed over the batch's labelled positions (as a tensor, for backward), how many positions carry a label,
and a dict of extra scalar tensors to log. Summing rather than averaging lets the Trainer weigh every labelled
position of a global batch equally, however the positions fall into micro-batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFunction = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, torch.Tensor, dict]"]
IGNORE_INDEX = -100  # labels at positions without loss, as torch's cross_entropy expects
SHIFTED_ARCHS = ("decoder", "prefix_decoder")  # position t predicts token t + 1


def shift_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each position's logits with the next token's label (causal and prefix language models)."""
    return logits[:, :-1], labels[:, 1:]


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy in float32, number of labelled positions) over labels that are not IGNORE_INDEX."""
    summed = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                             reduction="sum")
    return summed, (labels != IGNORE_INDEX).sum()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position [batch, seq] (0 where the target is IGNORE_INDEX), in float32."""
    logprobs = logits.float().log_softmax(dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return picked.masked_fill(targets == IGNORE_INDEX, 0.0)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """PaLM's auxiliary loss: the mean over positions of log(Z)², Z the softmax normaliser."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def language_model_terms(arch: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, labelled positions) of a batch for a model of arch: shifted for decoders, as they are
    for encoder-decoders (labels are the decoder's targets) and encoders (masked-LM labels)."""
    if arch in SHIFTED_ARCHS:
        logits, labels = shift_labels(logits, labels)
    return token_cross_entropy(logits, labels)


def mean_language_model_loss(arch: str, logits: torch.Tensor, labels: torch.Tensor,
                             aux_loss: torch.Tensor | None = None) -> torch.Tensor:
    """The Hugging Face-style loss: mean cross-entropy over labelled positions, plus the MoE auxiliary loss."""
    summed, count = language_model_terms(arch, logits, labels)
    loss = summed / count
    return loss if aux_loss is None else loss + aux_loss


def labelled_positions(arch: str, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [batch, seq] of the positions whose logits predict a label, those labels in row-major order): position
    t predicts label t + 1 in decoders, label t otherwise."""
    if arch not in SHIFTED_ARCHS:
        at = labels != IGNORE_INDEX
        return at, labels[at]
    at = torch.zeros_like(labels, dtype=torch.bool)
    at[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return at, labels[:, 1:][at[:, :-1]]


def language_model_loss(model, batch: dict, z_loss_weight: float = 0.0,
                        labelled_logits_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The pretraining loss of every objective: next-token (decoders), target (encoder-decoders) or masked-token
    (encoders) cross-entropy over the labels; the MoE auxiliary loss and z-loss (weighted) count per labelled
    position, so that summed / count is their mean plus the mean cross-entropy. labelled_logits_only computes the
    head only where a label is predicted (fine-tuning labels few positions; the z-loss then covers only those)."""
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    core = unwrap(model)
    arch = getattr(getattr(core, "config", None), "arch", "decoder")
    if arch == "encoder_decoder" and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = core.shift_right(batch["labels"])  # teacher forcing
    if labelled_logits_only:
        inputs["logits_at"], targets = labelled_positions(arch, batch["labels"])
        output = model(**inputs)
        summed, count = token_cross_entropy(output.logits, targets)
    else:
        output = model(**inputs)
        summed, count = language_model_terms(arch, output.logits, batch["labels"])
    metrics = {"cross_entropy": summed.detach()}
    if getattr(output, "aux_loss", None) is not None:
        summed = summed + output.aux_loss * count
        metrics["aux_loss"] = output.aux_loss.detach() * count
    if z_loss_weight:
        z = z_loss(output.logits)
        summed = summed + z_loss_weight * z * count
        metrics["z_loss"] = z.detach() * count
    return summed, count, metrics


def unwrap(model):
    """The module inside the DDP, FSDP or torch.compile wrappers around a model."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
