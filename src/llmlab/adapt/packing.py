"""Batches of tokenised examples (ids, labels): packed by best-fit decreasing into windows of seq_len with document
ids, so that each example attends only to itself and its positions restart (the loss equals the unpacked one), or
right-padded one example per row."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from llmlab.objectives.losses import IGNORE_INDEX

Example = tuple[Sequence[int], Sequence[int]]  # (input_ids, labels)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of lengths grouped into bins of at most capacity: longest first, each into the fullest bin it fits."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"an example of {length} tokens does not fit a window of {capacity}.")
        place = bisect.bisect_left(free, (length, -1))
        if place < len(free):
            room, chosen = free.pop(place)
        else:
            room, chosen = capacity, len(bins)
            bins.append([])
        bins[chosen].append(index)
        if room - length:
            bisect.insort(free, (room - length, chosen))
    return bins


def pack(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Every example packed into rows of seq_len: input_ids, labels (IGNORE_INDEX on padding and on each document's
    first token, which nothing in its document predicts) and document_ids (padding is a document of its own)."""
    rows = best_fit_decreasing([len(ids) for ids, _ in examples], seq_len)
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    document_ids = torch.empty((len(rows), seq_len), dtype=torch.long)
    for row, members in enumerate(rows):
        start = 0
        for document, index in enumerate(sorted(members)):
            ids, example_labels = examples[index]
            end = start + len(ids)
            input_ids[row, start:end] = torch.tensor(ids)
            labels[row, start + 1:end] = torch.tensor(example_labels[1:], dtype=torch.long)
            document_ids[row, start:end] = document
            start = end
        document_ids[row, start:] = len(members)
    return {"input_ids": input_ids, "labels": labels, "document_ids": document_ids}


def pad(examples: Sequence[Example], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to length (default: the longest): input_ids, labels (IGNORE_INDEX on
    padding), attention_mask."""
    length = length or max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, example_labels) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(example_labels, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
