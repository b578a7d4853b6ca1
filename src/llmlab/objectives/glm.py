"""GLM's autoregressive blank infilling (Du et al. 2022, §2.1–2.2), for a prefix decoder with 2-D positions.

Spans are cut from the text; part A is the text with one mask token per span, attended bidirectionally
(prefix_lengths = len(part A)); part B is the spans in shuffled order, each led by [sop], predicted left to right.
Positions are [batch, 2, seq]: the first row is the position in part A (for part B, that of the span's mask token),
the second is 0 in part A and 1, 2, … within each [sop] + span. GLM predicts span + [eop] from [sop] + span;
Model.forward shifts labels by one, so each [eop] target sits on the next span's [sop] and the last one on an
extra trailing [eop] input token, which continues the last span's positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmlab.errors import ConfigError, DataError
from llmlab.objectives.common import IGNORE_INDEX, check_fraction, check_windows, pad_rows


def blank_infilling_example(tokens: torch.Tensor, spans: Sequence[tuple[int, int]], order: Sequence[int],
                            mask_token_id: int, sop_token_id: int, eop_token_id: int) -> dict:
    """input_ids [L], position_ids [2, L], labels [L] and prefix_length for (start, length) spans in part-B order."""
    spans = sorted(spans)
    if any(length < 1 for _, length in spans) or any(a + la > b for (a, la), (b, _) in zip(spans, spans[1:])) \
            or (spans and spans[-1][0] + spans[-1][1] > len(tokens)):
        raise DataError(f"GLM spans must be non-empty, disjoint and inside the {len(tokens)} tokens, got {spans}.")
    part_a, mask_positions, cursor = [], [], 0
    for start, length in spans:
        part_a += tokens[cursor:start].tolist()
        mask_positions.append(len(part_a))
        part_a.append(mask_token_id)
        cursor = start + length
    part_a += tokens[cursor:].tolist()
    ids, first, second = list(part_a), list(range(len(part_a))), [0] * len(part_a)
    labels = [IGNORE_INDEX] * len(part_a)
    for rank, index in enumerate(order):
        start, length = spans[index]
        ids += [sop_token_id] + tokens[start:start + length].tolist()
        first += [mask_positions[index]] * (length + 1)
        second += list(range(1, length + 2))
        labels += [IGNORE_INDEX if rank == 0 else eop_token_id] + tokens[start:start + length].tolist()
    if spans:
        ids.append(eop_token_id)
        first.append(first[-1])
        second.append(second[-1] + 1)
        labels.append(eop_token_id)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor([first, second]),
            "labels": torch.tensor(labels), "prefix_length": len(part_a)}


@dataclass(frozen=True)
class GLMBlankInfilling:
    """GLM's pretraining batches (Du et al. 2022, §2.1 and §2.3.1), by the unit of what is blanked out.

    unit="token" (the blank-infilling objective, with [MASK]): span lengths drawn from Poisson(poisson_lambda),
    zero redrawn, until round(n · mask_ratio) tokens are covered (the last span cut to fit), placed uniformly
    at random without overlap. unit="sentence" (with [sMASK]): whole sentences, each ending after one of
    sentence_end_ids, drawn in random order until they cover round(n · mask_ratio) tokens. unit="document"
    (with [gMASK]): one span at the end whose length is uniform over 50%–100% of the window. Rows are
    right-padded (pad id, position 0, label -100); being causal after part A, real tokens never see the padding.
    """

    mask_token_id: int
    sop_token_id: int
    eop_token_id: int
    pad_token_id: int = 0
    mask_ratio: float = 0.15
    poisson_lambda: float = 3.0
    unit: str = "token"
    sentence_end_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.unit not in ("token", "sentence", "document"):
            raise ConfigError(f"GLMBlankInfilling.unit must be 'token', 'sentence' or 'document', got {self.unit!r}.")
        if self.unit == "sentence" and not self.sentence_end_ids:
            raise ConfigError("GLMBlankInfilling with unit='sentence' needs sentence_end_ids.")
        check_fraction(self.mask_ratio, "GLMBlankInfilling.mask_ratio")
        if self.poisson_lambda <= 0:
            raise ConfigError(f"GLMBlankInfilling.poisson_lambda must be positive, got {self.poisson_lambda}.")

    def sample_spans(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> list[tuple[int, int]]:
        """Sorted (start, length) spans to blank out of a 1-D window."""
        length = len(tokens)
        budget = min(max(round(length * self.mask_ratio), 1), length)
        if self.unit == "document":
            span = int(torch.randint((length + 1) // 2, length + 1, (), generator=generator))
            return [(length - span, span)]
        if self.unit == "sentence":
            return self._sample_sentences(tokens, budget, generator)
        lengths: list[int] = []
        while sum(lengths) < budget:
            draw = int(torch.poisson(torch.tensor([self.poisson_lambda]), generator=generator))
            if draw > 0:
                lengths.append(min(draw, budget - sum(lengths)))
        lengths = [lengths[k] for k in torch.randperm(len(lengths), generator=generator).tolist()]
        # Stars and bars: the unmasked tokens fall uniformly into the len(lengths) + 1 gaps around the spans.
        unmasked = length - budget
        cuts = torch.randperm(unmasked + len(lengths), generator=generator)[:len(lengths)].sort().values
        gaps = torch.diff(torch.cat([torch.tensor([-1]), cuts])) - 1
        spans, cursor = [], 0
        for gap, span_length in zip(gaps.tolist(), lengths):
            spans.append((cursor + gap, span_length))
            cursor += gap + span_length
        return spans

    def _sample_sentences(self, tokens: torch.Tensor, budget: int, generator: torch.Generator | None) -> list:
        ends = torch.isin(tokens, torch.tensor(self.sentence_end_ids, dtype=torch.long)).nonzero().flatten() + 1
        bounds = [0] + [end for end in ends.tolist() if end < len(tokens)] + [len(tokens)]
        sentences = list(zip(bounds[:-1], (b - a for a, b in zip(bounds[:-1], bounds[1:]))))
        chosen, covered = [], 0
        for index in torch.randperm(len(sentences), generator=generator).tolist():
            if covered >= budget:
                break
            chosen.append(sentences[index])
            covered += sentences[index][1]
        return sorted(chosen)

    def __call__(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Return input_ids, position_ids [batch, 2, seq], labels and prefix_lengths for Model.forward."""
        windows = check_windows(windows, "GLMBlankInfilling")
        examples = []
        for row in windows:
            spans = self.sample_spans(row, generator)
            order = torch.randperm(len(spans), generator=generator).tolist()
            examples.append(blank_infilling_example(row, spans, order, self.mask_token_id, self.sop_token_id,
                                                    self.eop_token_id))
        return {
            "input_ids": pad_rows([e["input_ids"] for e in examples], self.pad_token_id),
            "position_ids": pad_rows([e["position_ids"] for e in examples], 0),
            "labels": pad_rows([e["labels"] for e in examples], IGNORE_INDEX),
            "prefix_lengths": torch.tensor([e["prefix_length"] for e in examples]),
        }
