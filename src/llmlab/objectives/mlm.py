"""BERT's masked language modelling (Devlin et al. 2019, §3.1): 15% chosen; 80% [MASK], 10% random, 10% kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.objectives.common import IGNORE_INDEX, check_fraction, check_windows


@dataclass(frozen=True)
class MaskedLM:
    """Choose round(n · mask_prob) positions per row (as BERT's create_pretraining_data), never special tokens.

    Chosen tokens become [MASK] with probability 0.8, a uniformly random id below vocab_size with 0.1, and stay
    with 0.1; labels hold the original id at chosen positions and -100 elsewhere (no shift: an encoder's loss).
    """

    mask_token_id: int
    vocab_size: int
    mask_prob: float = 0.15
    special_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        check_fraction(self.mask_prob, "MaskedLM.mask_prob")

    def __call__(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Return input_ids and labels for a batch of token windows."""
        windows = check_windows(windows, "MaskedLM")
        inputs, labels = windows.clone(), torch.full_like(windows, IGNORE_INDEX)
        maskable = ~torch.isin(windows, torch.tensor(self.special_token_ids, dtype=torch.long))
        for row in range(len(windows)):
            candidates = maskable[row].nonzero().flatten()
            if len(candidates) == 0:
                continue
            count = max(1, round(len(candidates) * self.mask_prob))
            chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
            labels[row, chosen] = windows[row, chosen]
            draw = torch.rand(count, generator=generator)
            random_ids = torch.randint(0, self.vocab_size, (count,), generator=generator)
            inputs[row, chosen] = torch.where(draw < 0.8, self.mask_token_id,
                                              torch.where(draw < 0.9, random_ids, windows[row, chosen]))
        return {"input_ids": inputs, "labels": labels}
