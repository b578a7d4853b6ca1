"""Log-probabilities of the labelled response tokens of (input_ids, labels) batches, for any architecture: what DPO,
PPO and GRPO score a response with (survey §5).

A batch holds right-padded ``input_ids`` and ``attention_mask`` and ``labels`` (IGNORE_INDEX on the prompt and the
padding), as `FinetuneContext.encode` gives them: decoders label the response inside input_ids (position t predicts
token t + 1); encoder-decoders take the prompt as input_ids and the response as the decoder's labels. Everything is
float32, and a row's result does not depend on the padding around it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmlab.errors import ConfigError
from llmlab.objectives.losses import IGNORE_INDEX, SHIFTED_ARCHS, shift_labels, token_logprobs, unwrap


def padded_batch(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE_INDEX past each row's end) of (input_ids, labels)
    pairs; input_ids and labels pad to their own longest, since an encoder-decoder's differ in length."""
    width = max(len(ids) for ids, _ in sequences)
    label_width = max(len(labels) for _, labels in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), label_width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, row_labels) in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        labels[row, :len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def model_inputs(model, batch: dict) -> tuple[dict, torch.Tensor]:
    """The keyword arguments of model's forward for a labelled batch, and the targets aligned with its logits."""
    arch = unwrap(model).config.arch
    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if arch == "encoder":
        raise ConfigError("an encoder-only model predicts no response tokens; log-probabilities need a decoder.")
    if arch == "encoder_decoder":
        inputs["decoder_input_ids"] = unwrap(model).shift_right(labels)  # teacher forcing
        return inputs, labels
    if arch == "prefix_decoder":  # the unlabelled prompt is the bidirectional prefix, as the prefix-LM objective has it
        prefix = batch.get("prefix_lengths")
        inputs["prefix_lengths"] = (labels != IGNORE_INDEX).int().argmax(dim=-1) if prefix is None else prefix
    return inputs, labels


def response_token_logprobs(model, batch: dict) -> torch.Tensor:
    """log p(token) in float32 of every labelled response token [batch, positions] (0 where unlabelled), through one
    forward of model (its wrapper's, so that data-parallel gradients synchronise)."""
    inputs, labels = model_inputs(model, batch)
    logits = model(**inputs).logits
    if unwrap(model).config.arch in SHIFTED_ARCHS:
        logits, labels = shift_labels(logits, labels)
    return token_logprobs(logits, labels)


def response_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability [batch] in float32, labelled token count [batch]) of each row's response."""
    labels = batch["labels"]
    if unwrap(model).config.arch in SHIFTED_ARCHS:
        labels = labels[:, 1:]
    return response_token_logprobs(model, batch).sum(dim=-1), (labels != IGNORE_INDEX).sum(dim=-1)
