"""Objectives against tiny examples worked by hand from the papers' definitions (T5, UL2, GLM, BERT)."""

import pytest
import torch

from llmlab.errors import ConfigError, DataError
from llmlab.objectives import (
    IGNORE_INDEX,
    UL2,
    GLMBlankInfilling,
    MaskedLM,
    PrefixLM,
    SpanCorruption,
    blank_infilling_example,
    causal_lm,
    corrupt_spans,
    random_spans_noise_mask,
    sentinel_ids,
    span_corruption_lengths,
    to_decoder_only,
)

X = IGNORE_INDEX


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def runs(mask):
    """The (start, length) runs of True in a boolean mask."""
    spans, start = [], None
    for index, value in enumerate(mask.tolist() + [False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            spans.append((start, index - start))
            start = None
    return spans


# --- causal and prefix LM ------------------------------------------------------------------------------------------

def test_causal_lm_targets_every_token():
    batch = causal_lm(torch.tensor([[5, 6, 7]]))
    assert batch["input_ids"].tolist() == [[5, 6, 7]] and batch["labels"].tolist() == [[5, 6, 7]]


def test_prefix_lm_fixed_split_has_loss_on_the_suffix_only():
    batch = PrefixLM(prefix_length=2)(torch.tensor([[10, 11, 12, 13, 14]]))
    assert batch["labels"].tolist() == [[X, X, 12, 13, 14]]
    assert batch["prefix_lengths"].tolist() == [2]


def test_prefix_lm_random_split_covers_every_split_point():
    windows = torch.arange(6).repeat(200, 1)
    batch = PrefixLM()(windows, generator())
    assert set(batch["prefix_lengths"].tolist()) == {1, 2, 3, 4, 5}
    for labels, prefix in zip(batch["labels"], batch["prefix_lengths"]):
        assert labels.tolist() == [X] * prefix + list(range(prefix, 6))


def test_prefix_lm_rejects_a_split_outside_the_window():
    with pytest.raises(ConfigError, match="prefix_length"):
        PrefixLM(prefix_length=5)(torch.zeros(1, 5, dtype=torch.long))


def test_objectives_reject_a_one_dimensional_stream():
    with pytest.raises(DataError, match=r"\[batch, seq\]"):
        PrefixLM()(torch.arange(5))


# --- T5 span corruption --------------------------------------------------------------------------------------------

def test_span_corruption_reproduces_the_t5_paper_figure_2():
    words = "Thank you for inviting me to your party last week .".split()
    vocab = {word: index for index, word in enumerate(words)}
    tokens = torch.tensor([vocab[word] for word in words])
    noise = torch.tensor([word in ("for", "inviting", "last") for word in words])
    sentinel_x, sentinel_y, sentinel_z, eos = 102, 101, 100, 1
    inputs, targets = corrupt_spans(tokens, noise, [sentinel_x, sentinel_y, sentinel_z], eos)
    expected_inputs = [vocab["Thank"], vocab["you"], sentinel_x, vocab["me"], vocab["to"], vocab["your"],
                       vocab["party"], sentinel_y, vocab["week"], vocab["."], eos]
    expected_targets = [sentinel_x, vocab["for"], vocab["inviting"], sentinel_y, vocab["last"], sentinel_z, eos]
    assert inputs.tolist() == expected_inputs
    assert targets.tolist() == expected_targets


def test_sentinels_count_down_from_the_top_of_the_vocabulary():
    assert sentinel_ids(3, vocab_size=32100) == [32099, 32098, 32097]  # T5's <extra_id_0>, <extra_id_1>, …
    assert sentinel_ids(2, ids=[7, 8, 9]) == [7, 8]
    with pytest.raises(ConfigError, match="sentinel"):
        sentinel_ids(4, ids=[7, 8, 9])


@pytest.mark.parametrize(
    ("length", "density", "mean_span", "noise_tokens", "noise_spans"),
    [
        (100, 0.15, 3, 15, 5),
        (10, 0.25, 3, 2, 1),  # round(2.5) = 2: Python's and TensorFlow's round both go half to even
        (20, 0.5, 3, 10, 3),
        (64, 0.15, 64, 10, 1),  # round(10 / 64) = 0 spans, raised to 1
    ],
)
def test_noise_mask_has_t5s_token_and_span_counts(length, density, mean_span, noise_tokens, noise_spans):
    for seed in range(5):
        mask = random_spans_noise_mask(length, density, mean_span, generator(seed))
        assert mask.shape == (length,) and int(mask.sum()) == noise_tokens
        assert len(runs(mask)) == noise_spans
        assert not mask[0] and mask[-1]  # T5 without random_roll: starts with kept tokens, ends with noise


def test_noise_mask_places_spans_at_random():
    starts = {runs(random_spans_noise_mask(100, 0.15, 3, generator(seed)))[0][0] for seed in range(20)}
    assert len(starts) > 5


def test_span_corruption_batch_on_a_ten_token_window():
    # length 10: round(1.5) = 2 noise tokens in max(round(2 / 3), 1) = 1 span, which T5's mask puts last.
    objective = SpanCorruption(eos_token_id=1, vocab_size=100)
    batch = objective(torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]), generator())
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14, 15, 16, 17, 99, 1]]
    assert batch["attention_mask"].tolist() == [[1] * 10]
    assert batch["labels"].tolist() == [[99, 18, 19, 1]]


def test_window_length_for_512_input_tokens_is_t5s_568_with_114_targets():
    # T5's random_spans_helper(512, 0.15, 3): 568 tokens → 85 noise in 28 spans → 483 + 28 + 1 = 512 inputs and
    # 85 + 28 + 1 = 114 targets (the lengths Hugging Face's run_t5_mlm_flax also uses); 569 would give 513 inputs.
    assert span_corruption_lengths(512) == (568, 114)
    batch = SpanCorruption(eos_token_id=1, vocab_size=32100)(torch.arange(2, 570)[None], generator())
    assert batch["input_ids"].shape == (1, 512) and batch["labels"].shape == (1, 114)


def test_span_corruption_is_deterministic_given_the_generator():
    objective = SpanCorruption(eos_token_id=1, vocab_size=1000)
    windows = torch.arange(200).view(2, 100)
    first, second = objective(windows, generator(3)), objective(windows, generator(3))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_span_corruption_inputs_and_targets_rebuild_the_text():
    objective = SpanCorruption(eos_token_id=1, vocab_size=1000)
    tokens = torch.arange(2, 102)
    inputs, targets = objective.example(tokens, generator(1))
    pieces = {}
    for sequence, owner in ((inputs[:-1].tolist(), "kept"), (targets[:-1].tolist(), "noise")):
        current = None
        for token in sequence:
            if token >= 900:
                current = token
                pieces.setdefault(current, {})[owner] = []
            elif current is not None:
                pieces[current][owner].append(token)
    rebuilt = inputs[: inputs.tolist().index(999)].tolist()
    for sentinel in sorted(pieces, reverse=True):
        rebuilt += pieces[sentinel].get("noise", []) + pieces[sentinel].get("kept", [])
    assert rebuilt == tokens.tolist()


# --- UL2 -----------------------------------------------------------------------------------------------------------

MODES = {"R": 900, "S": 901, "X": 902}
TEN = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19]])


def only(index):
    return [1.0 if k == index else 0.0 for k in range(7)]


def test_ul2_s_denoiser_is_a_prefix_lm_with_the_last_quarter_as_target():
    batch = UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=1000, rates=only(2))(torch.arange(10, 18)[None])
    assert batch["input_ids"].tolist() == [[901, 10, 11, 12, 13, 14, 15, 1]]
    assert batch["labels"].tolist() == [[16, 17, 1]]


def test_ul2_r_denoiser_is_t5_span_corruption_with_the_r_token():
    batch = UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=1000, rates=only(0))(TEN, generator())
    assert batch["input_ids"].tolist() == [[900, 10, 11, 12, 13, 14, 15, 16, 17, 999, 1]]
    assert batch["labels"].tolist() == [[999, 18, 19, 1]]


def test_ul2_extreme_denoiser_masks_half_in_one_long_span():
    # μ = 64, r = 0.5 on 10 tokens: 5 noise tokens, max(round(5 / 64), 1) = 1 span, at the end.
    batch = UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=1000, rates=only(6))(TEN, generator())
    assert batch["input_ids"].tolist() == [[902, 10, 11, 12, 13, 14, 999, 1]]
    assert batch["labels"].tolist() == [[999, 15, 16, 17, 18, 19, 1]]


def test_ul2_mixes_the_seven_denoisers_uniformly_by_default():
    batch = UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=1000)(torch.arange(2, 66).repeat(1400, 1), generator())
    modes = batch["input_ids"][:, 0]
    for mode, share in (("R", 2 / 7), ("S", 1 / 7), ("X", 4 / 7)):
        assert abs((modes == MODES[mode]).float().mean().item() - share) < 0.04
    padded = batch["attention_mask"] == 0
    assert torch.all(batch["input_ids"][padded] == 0)


def test_ul2_for_a_decoder_puts_the_targets_after_the_inputs_as_a_prefix():
    objective = UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=1000, rates=only(2), decoder_only=True)
    batch = objective(torch.stack([torch.arange(10, 18), torch.arange(20, 28)]))
    # S-denoiser on 8 tokens: inputs [S] x0 … x5 [eos] (8 tokens), targets x6 x7 [eos].
    assert batch["input_ids"].tolist() == [[901, 10, 11, 12, 13, 14, 15, 1, 16, 17, 1],
                                           [901, 20, 21, 22, 23, 24, 25, 1, 26, 27, 1]]
    assert batch["labels"].tolist() == [[X] * 8 + [16, 17, 1], [X] * 8 + [26, 27, 1]]
    assert batch["prefix_lengths"].tolist() == [8, 8]


def test_span_corruption_for_a_decoder_drops_the_padding_between_inputs_and_targets():
    batch = to_decoder_only({"input_ids": torch.tensor([[4, 99, 1, 0], [4, 5, 99, 1]]),
                             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
                             "labels": torch.tensor([[99, 6, 7, 1], [99, 6, 1, X]])})
    assert batch["input_ids"].tolist() == [[4, 99, 1, 99, 6, 7, 1], [4, 5, 99, 1, 99, 6, 1]]
    assert batch["labels"].tolist() == [[X, X, X, 99, 6, 7, 1], [X, X, X, X, 99, 6, 1]]
    assert batch["prefix_lengths"].tolist() == [3, 4]


def test_ul2_needs_an_id_for_every_mode():
    with pytest.raises(ConfigError, match="mode_token_ids"):
        UL2(eos_token_id=1, mode_token_ids={"R": 5, "X": 6}, vocab_size=100)


# --- GLM -----------------------------------------------------------------------------------------------------------

MASK, SOP, EOP = 1, 2, 3


def test_glm_blank_infilling_on_a_ten_token_example_worked_by_hand():
    # x = 10 … 19; spans x2 x3 and x6 x7 x8; part B takes the second span first.
    # Part A: 10 11 [M] 14 15 [M] 19, the masks at positions 2 and 5.
    example = blank_infilling_example(torch.arange(10, 20), [(2, 2), (6, 3)], [1, 0], MASK, SOP, EOP)
    assert example["input_ids"].tolist() == [10, 11, MASK, 14, 15, MASK, 19, SOP, 16, 17, 18, SOP, 12, 13, EOP]
    assert example["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 5, 5, 5, 5, 2, 2, 2, 2],
        [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 1, 2, 3, 4],
    ]
    # GLM's targets for [sop] 16 17 18 are 16 17 18 [eop]; labels here are aligned to inputs (the model shifts).
    assert example["labels"].tolist() == [X] * 7 + [X, 16, 17, 18, EOP, 12, 13, EOP]
    assert example["prefix_length"] == 7


def test_glm_rejects_overlapping_spans():
    with pytest.raises(DataError, match="disjoint"):
        blank_infilling_example(torch.arange(10), [(2, 3), (4, 2)], [0, 1], MASK, SOP, EOP)


def test_glm_spans_cover_fifteen_percent_without_overlap():
    objective = GLMBlankInfilling(MASK, SOP, EOP)
    lengths = []
    for seed in range(50):
        spans = objective.sample_spans(torch.arange(100), generator(seed))
        assert sum(length for _, length in spans) == 15
        assert all(a + la <= b for (a, la), (b, _) in zip(spans, spans[1:])) and spans[-1][0] + spans[-1][1] <= 100
        lengths += [length for _, length in spans[:-1]]  # the last span may be cut to fit
    # Poisson(3) without zeros, cut at the budget of 15: the mean lies near 3 / (1 - e^-3) ≈ 3.16.
    assert 2.6 < sum(lengths) / len(lengths) < 3.6


def test_glm_document_objective_masks_one_tail_span_of_half_or_more():
    objective = GLMBlankInfilling(MASK, SOP, EOP, unit="document")
    for seed in range(20):
        [(start, length)] = objective.sample_spans(torch.arange(40), generator(seed))
        assert 20 <= length <= 40 and start + length == 40


def test_glm_sentence_objective_masks_whole_sentences_until_fifteen_percent():
    # Sentences end after token 0: lengths 4, 6, 3, 7 (20 tokens), so round(0.15 · 20) = 3 is covered by the
    # first sentence drawn, whichever it is.
    tokens = torch.tensor([5, 5, 5, 0, 6, 6, 6, 6, 6, 0, 7, 7, 0, 8, 8, 8, 8, 8, 8, 0])
    objective = GLMBlankInfilling(MASK, SOP, EOP, unit="sentence", sentence_end_ids=(0,))
    drawn = {tuple(objective.sample_spans(tokens, generator(seed))) for seed in range(30)}
    assert drawn == {((0, 4),), ((4, 6),), ((10, 3),), ((13, 7),)}
    with pytest.raises(ConfigError, match="sentence_end_ids"):
        GLMBlankInfilling(MASK, SOP, EOP, unit="sentence")


def test_glm_batch_pads_rows_and_reports_part_a_lengths():
    batch = GLMBlankInfilling(MASK, SOP, EOP, pad_token_id=0)(torch.arange(10, 90).view(2, 40), generator())
    for row in range(2):
        prefix = int(batch["prefix_lengths"][row])
        ids = batch["input_ids"][row]
        spans = int((ids[:prefix] == MASK).sum())
        real = prefix + (40 - (prefix - spans)) + spans + 1  # part A, the spans' tokens, a [sop] each, one [eop]
        assert int((ids[:real] == SOP).sum()) == spans and ids[real - 1] == EOP
        assert torch.all(ids[real:] == 0) and torch.all(batch["labels"][row, real:] == X)
    assert batch["position_ids"].shape == (2, 2, batch["input_ids"].shape[1])


# --- BERT masked LM ------------------------------------------------------------------------------------------------

def test_mlm_chooses_fifteen_percent_and_splits_them_80_10_10():
    vocab, mask_id, rows, length = 1000, 999, 64, 500
    windows = torch.randint(10, 900, (rows, length), generator=generator(1))
    windows[:, 0] = 5  # a special token ([CLS]), never chosen
    batch = MaskedLM(mask_id, vocab, special_token_ids=(5,))(windows, generator())
    chosen = batch["labels"] != X
    assert chosen.sum(dim=1).tolist() == [round(499 * 0.15)] * rows and not chosen[:, 0].any()
    assert torch.equal(batch["labels"][chosen], windows[chosen])
    assert torch.equal(batch["input_ids"][~chosen], windows[~chosen])
    new = batch["input_ids"][chosen]
    masked = (new == mask_id).float().mean().item()
    kept = (new == windows[chosen]).float().mean().item()
    replaced = 1 - masked - kept
    # With n = 4736 choices the standard deviation of a share is at most 0.007; a replacement draws the original
    # token (or the mask id) with probability 2 / 1000, counted as kept or masked.
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02
