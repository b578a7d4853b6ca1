"""UL2's mixture of denoisers (Tay et al. 2022, §3.1.2): R, S and X denoisers, each input led by its mode token.

The paper's seven denoisers (§3.1.2, "Mixture of Denoisers"), written there as (μ mean span, r corruption rate):
  R: (μ=3, r=0.15) and (μ=8, r=0.15)  — T5-like span corruption;
  S: (μ=L/4, r=0.25), one span        — prefix LM whose target is the last quarter of the sequence;
  X: (μ=3, r=0.5), (μ=8, r=0.5), (μ=64, r=0.15), (μ=64, r=0.5) — extreme span corruption.
Default mixing rates: one seventh each, as the paper's own preprocessor (appendix 9.2, `ul2_objective` with
rates=None: "tasks are sampled uniformly", the prefix-LM task being one of them); pass `rates` to change them.
The output is for an encoder-decoder (input_ids/attention_mask → encoder, labels → decoder), as UL2-20B, or with
decoder_only=True for a (prefix) decoder: inputs then targets, the inputs attended bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmlab.errors import ConfigError
from llmlab.objectives.causal import prefix_split
from llmlab.objectives.common import check_windows
from llmlab.objectives.span_corruption import SpanCorruption, encoder_decoder_batch, to_decoder_only


@dataclass(frozen=True)
class Denoiser:
    """One denoiser: mode 'R', 'S' or 'X', mean span length (unused by S) and corruption rate."""

    mode: str
    mean_span: float
    rate: float


UL2_DENOISERS = (
    Denoiser("R", 3, 0.15), Denoiser("R", 8, 0.15),
    Denoiser("S", 0, 0.25),
    Denoiser("X", 3, 0.5), Denoiser("X", 8, 0.5), Denoiser("X", 64, 0.15), Denoiser("X", 64, 0.5),
)


@dataclass(frozen=True)
class UL2:
    """Mixture of denoisers: per example, draw a denoiser by rate, prepend its mode token, corrupt accordingly.

    mode_token_ids maps 'R', 'S', 'X' to the ids of [R]/[S]/[X] (UL2's [NLU]/[S2S]/[NLG]); sentinels as in
    SpanCorruption (the given list, or counting down from vocab_size - 1).
    """

    eos_token_id: int
    mode_token_ids: dict[str, int]
    vocab_size: int | None = None
    sentinel_ids: tuple[int, ...] | None = None
    pad_token_id: int = 0
    denoisers: Sequence[Denoiser] = UL2_DENOISERS
    rates: Sequence[float] | None = None
    decoder_only: bool = False
    _corrupters: tuple = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self):
        missing = {d.mode for d in self.denoisers} - set(self.mode_token_ids)
        if missing:
            raise ConfigError(f"UL2.mode_token_ids has no id for mode(s) {', '.join(sorted(missing))}.")
        if self.rates is not None and (len(self.rates) != len(self.denoisers) or min(self.rates) < 0
                                       or sum(self.rates) <= 0):
            raise ConfigError(f"UL2.rates must be {len(self.denoisers)} non-negative numbers with a positive sum, "
                              f"got {list(self.rates)}.")
        corrupters = tuple(
            None if d.mode == "S" else SpanCorruption(
                self.eos_token_id, d.rate, d.mean_span, self.vocab_size, self.sentinel_ids, self.pad_token_id,
                self.mode_token_ids[d.mode])
            for d in self.denoisers
        )
        object.__setattr__(self, "_corrupters", corrupters)

    def _sequential(self, tokens: torch.Tensor, denoiser: Denoiser) -> tuple[torch.Tensor, torch.Tensor]:
        split = prefix_split(len(tokens), denoiser.rate)
        mode, eos = torch.tensor([self.mode_token_ids["S"]]), torch.tensor([self.eos_token_id])
        return torch.cat([mode, tokens[:split], eos]), torch.cat([tokens[split:], eos])

    def __call__(self, windows: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Return input_ids, attention_mask and labels, each row from a denoiser drawn by the mixing rates."""
        windows = check_windows(windows, "UL2")
        rates = torch.tensor(self.rates if self.rates is not None else [1.0] * len(self.denoisers), dtype=torch.float)
        choices = torch.multinomial(rates, len(windows), replacement=True, generator=generator).tolist()
        pairs = [
            self._sequential(row, self.denoisers[k]) if self._corrupters[k] is None
            else self._corrupters[k].example(row, generator)
            for row, k in zip(windows, choices)
        ]
        batch = encoder_decoder_batch(pairs, self.pad_token_id)
        return to_decoder_only(batch, self.pad_token_id) if self.decoder_only else batch
