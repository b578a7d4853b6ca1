"""Pretraining objectives (survey §4.2.3): each maps a batch of token windows to Model.forward's keyword arguments.

Every objective is called as ``objective(windows, generator)`` with windows a [batch, seq] tensor of token ids and
returns a dict of tensors (labels -100 where there is no loss), deterministic given the torch.Generator.
Special tokens (sentinels, [R]/[S]/[X], [MASK]/[gMASK]/[sop]/[eop]) are passed in as ids.
"""

from llmlab.objectives.causal import PrefixLM, causal_lm, prefix_split
from llmlab.objectives.common import IGNORE_INDEX, objective_batches
from llmlab.objectives.glm import GLMBlankInfilling, blank_infilling_example
from llmlab.objectives.mlm import MaskedLM
from llmlab.objectives.span_corruption import (
    SpanCorruption,
    corrupt_spans,
    random_spans_noise_mask,
    sentinel_ids,
    span_corruption_lengths,
    to_decoder_only,
)
from llmlab.objectives.ul2 import UL2, UL2_DENOISERS, Denoiser

__all__ = [
    "IGNORE_INDEX", "UL2", "UL2_DENOISERS", "Denoiser", "GLMBlankInfilling", "MaskedLM", "PrefixLM", "SpanCorruption",
    "blank_infilling_example", "causal_lm", "corrupt_spans", "objective_batches", "prefix_split",
    "random_spans_noise_mask", "sentinel_ids", "span_corruption_lengths", "to_decoder_only",
]
