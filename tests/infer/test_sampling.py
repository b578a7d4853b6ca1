"""Logits processing equals transformers' LogitsProcessors (to 1e-6, -inf positions included); presence and frequency
penalties follow OpenAI's formula; samples follow the filtered distribution; per-row seeds make each row independent;
log-probabilities are those of the raw logits."""

import math

import pytest
import torch
from scipy import stats
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.sampling import PAD, TokenCounts, choose_tokens, filter_logits, generators, process_logits

VOCAB = 40
BATCH = 6
PROMPT, GENERATED = 9, 5


def assert_equal_scores(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


@pytest.fixture
def logits():
    values = torch.randn(BATCH, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    values[0, :5] = float("-inf")  # already masked tokens stay masked
    values[1, 7:10] = values[1, 3]  # ties
    return values


@pytest.fixture
def history():
    """Prompt and generated tokens from a small alphabet, so that tokens and n-grams repeat."""
    return torch.randint(0, 4, (BATCH, PROMPT + GENERATED), generator=torch.Generator().manual_seed(1)) * 3


def counts_after(config, history, prompt_length=PROMPT, vocab=VOCAB):
    counts = TokenCounts.start(config, history[:, :prompt_length], vocab)
    for step in range(prompt_length, history.shape[1]):
        counts.update(history[:, step])
    return counts


def test_repetition_penalty_matches_transformers_over_prompt_and_generated(logits, history):
    config = GenerationConfig(repetition_penalty=1.7)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(history, logits.clone())
    assert_equal_scores(process_logits(logits, config, counts_after(config, history)), expected)


def test_padding_is_not_penalised(logits, history):
    config = GenerationConfig(repetition_penalty=1.7)
    padded = torch.cat([torch.full((BATCH, 3), PAD), history], dim=1)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(history, logits.clone())
    assert_equal_scores(process_logits(logits, config, counts_after(config, padded, PROMPT + 3)), expected)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(logits, history, size):
    config = GenerationConfig(no_repeat_ngram_size=size)
    expected = NoRepeatNGramLogitsProcessor(size)(history, logits.clone())
    assert expected.isinf().sum() > logits.isinf().sum()  # the small alphabet makes repeats
    assert_equal_scores(process_logits(logits, config, counts_after(config, history), history), expected)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_ignores_left_and_right_padding(logits, history, size):
    config = GenerationConfig(no_repeat_ngram_size=size)
    ragged = [history[row, :PROMPT + row % 3] for row in range(BATCH)]  # rows of different lengths
    expected = torch.cat([NoRepeatNGramLogitsProcessor(size)(row[None], logits[i:i + 1].clone())
                          for i, row in enumerate(ragged)])
    width = PROMPT + 4
    left = torch.stack([torch.cat([torch.full((width - len(row),), PAD), row]) for row in ragged])
    both = torch.stack([torch.cat([torch.full((1 + i % 2,), PAD), row, torch.full((width + 1 - i % 2 - len(row),), PAD)
                                   ]) for i, row in enumerate(ragged)])
    for padded in (left, both):
        assert_equal_scores(process_logits(logits, config, counts_after(config, history), padded), expected)


def test_no_repeat_ngram_with_a_history_shorter_than_the_ngram(logits):
    config = GenerationConfig(no_repeat_ngram_size=3)
    short = torch.tensor([[3, 3]] * BATCH)
    assert_equal_scores(process_logits(logits, config, counts_after(config, short, 2), short), logits)


@pytest.mark.parametrize("generated", [0, 1, 2, 3, 4])
def test_min_new_tokens_matches_transformers(logits, history, generated):
    config = GenerationConfig(min_new_tokens=3, eos_token_id=[2, 7])
    seen = history[:, :PROMPT + generated]
    expected = MinNewTokensLengthLogitsProcessor(PROMPT, 3, [2, 7])(seen, logits.clone())
    assert_equal_scores(process_logits(logits, config, counts_after(config, seen)), expected)


WARPERS = [
    (dict(temperature=0.6), [TemperatureLogitsWarper(0.6)]),
    (dict(top_k=5), [TopKLogitsWarper(5)]),
    (dict(top_k=VOCAB + 3), [TopKLogitsWarper(VOCAB + 3)]),
    (dict(top_p=0.7), [TopPLogitsWarper(0.7)]),
    (dict(top_p=0.05), [TopPLogitsWarper(0.05)]),
    (dict(min_p=0.1), [MinPLogitsWarper(0.1)]),
    (dict(min_p=1.0), [MinPLogitsWarper(1.0)]),
    (dict(temperature=1.5, top_k=12, top_p=0.9, min_p=0.05),
     [TemperatureLogitsWarper(1.5), TopKLogitsWarper(12), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]),
]


@pytest.mark.parametrize(("options", "warpers"), WARPERS)
def test_warpers_match_transformers(logits, history, options, warpers):
    config = GenerationConfig(do_sample=True, **options)
    expected = LogitsProcessorList(warpers)(history, logits.clone())
    assert_equal_scores(process_logits(logits, config, counts_after(config, history)), expected)


def test_greedy_decoding_skips_the_warpers(logits, history):
    config = GenerationConfig(temperature=0.5, top_k=2, top_p=0.1, min_p=0.5)
    assert_equal_scores(process_logits(logits, config, counts_after(config, history)), logits)


def test_everything_together_in_transformers_order(logits, history):
    config = GenerationConfig(do_sample=True, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=8,
                              eos_token_id=4, temperature=0.8, top_k=20, top_p=0.95, min_p=0.02)
    expected = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(2),
        MinNewTokensLengthLogitsProcessor(PROMPT, 8, 4), TemperatureLogitsWarper(0.8), TopKLogitsWarper(20),
        TopPLogitsWarper(0.95), MinPLogitsWarper(0.02),
    ])(history, logits.clone())
    assert_equal_scores(process_logits(logits, config, counts_after(config, history), history), expected)


def test_presence_and_frequency_penalties_follow_openai_formula():
    # logit - count * frequency - (count > 0) * presence, counting generated tokens only (token 3 is in the prompt)
    config = GenerationConfig(presence_penalty=0.5, frequency_penalty=0.25)
    counts = counts_after(config, torch.tensor([[3, 0, 0, 1]]), prompt_length=1, vocab=4)
    scores = process_logits(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), config, counts)
    assert scores.tolist() == [[1 - 2 * 0.25 - 0.5, 2 - 0.25 - 0.5, 3.0, 4.0]]


def test_negative_penalties_encourage_repeats():
    config = GenerationConfig(presence_penalty=-1.0, frequency_penalty=-2.0)
    counts = counts_after(config, torch.tensor([[2, 2]]), prompt_length=0, vocab=3)
    assert process_logits(torch.zeros(1, 3), config, counts).tolist() == [[0.0, 0.0, 5.0]]


def test_counts_follow_beam_reordering(history):
    config = GenerationConfig(repetition_penalty=2.0)
    counts = counts_after(config, history).select(torch.tensor([2, 2, 0]))
    assert_equal_scores(process_logits(torch.ones(3, VOCAB), config, counts),
                        RepetitionPenaltyLogitsProcessor(2.0)(history[[2, 2, 0]], torch.ones(3, VOCAB)))


def test_an_eos_id_outside_the_vocabulary_is_a_config_error():
    with pytest.raises(ConfigError, match="eos_token_id 50 .* 40"):
        TokenCounts.start(GenerationConfig(eos_token_id=50), torch.zeros(1, 2, dtype=torch.long), VOCAB)


def test_greedy_chooses_the_argmax(logits):
    assert choose_tokens(logits, GenerationConfig()).tokens.tolist() == logits.argmax(-1).tolist()


def sample_sequence(logits, seeds, steps=8):
    rows = generators(seeds)
    config = GenerationConfig(do_sample=True)
    return torch.stack([choose_tokens(logits, config, rows).tokens for _ in range(steps)], dim=1)


def test_each_rows_samples_depend_only_on_its_own_seed(logits):
    together = sample_sequence(logits[:3], [11, 22, 33])
    alone = [sample_sequence(logits[i:i + 1], [seed]) for i, seed in enumerate([11, 22, 33])]
    assert together.tolist() == torch.cat(alone).tolist()
    assert sample_sequence(logits[:3], [11, 22, 33]).tolist() == together.tolist()
    assert sample_sequence(logits[:3], [12, 23, 34]).tolist() != together.tolist()


def test_same_seed_in_two_rows_gives_the_same_samples(logits):
    both = sample_sequence(logits[[2, 2]], [5, 5])
    assert both[0].tolist() == both[1].tolist()


P = [0.4, 0.25, 0.15, 0.12, 0.08]


@pytest.mark.parametrize(("options", "expected"), [
    (dict(), P),
    (dict(top_k=2), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0]),
    # top-k 4 leaves 0.4, 0.25, 0.15, 0.12 (sum 0.92); the first three reach 0.8 / 0.92 > top_p 0.8
    (dict(top_k=4, top_p=0.8), [0.5, 0.3125, 0.1875, 0, 0]),
    (dict(min_p=0.5), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0]),
    (dict(temperature=2.0), [math.sqrt(p) / sum(math.sqrt(q) for q in P) for p in P]),
])
def test_samples_follow_the_filtered_distribution(options, expected):
    draws = 20_000
    config = GenerationConfig(do_sample=True, **options)
    scores = process_logits(torch.tensor(P).log().expand(draws, -1), config,
                            TokenCounts.start(config, torch.zeros(draws, 0, dtype=torch.long), len(P)))
    tokens = choose_tokens(scores, config, torch.Generator().manual_seed(0)).tokens
    observed = torch.bincount(tokens, minlength=len(P))
    allowed = [i for i, p in enumerate(expected) if p > 0]
    assert observed.sum() == observed[allowed].sum()  # filtered tokens are never drawn
    if len(allowed) > 1:
        result = stats.chisquare(observed[allowed].numpy(), [expected[i] * draws for i in allowed])
        assert result.pvalue > 1e-3


def test_logprobs_are_those_of_the_raw_logits():
    config = GenerationConfig(logprobs=2, repetition_penalty=10.0)
    logits = torch.tensor([[1.0, 1.0 + math.log(3.0), -math.inf]])
    counts = counts_after(config, torch.tensor([[1]]), prompt_length=1, vocab=3)
    choice = choose_tokens(process_logits(logits, config, counts), config, logits=logits)
    assert choice.tokens.tolist() == [0]  # the penalty turned the choice ...
    assert choice.logprobs.tolist() == pytest.approx([math.log(0.25)])  # ... not the reported distribution
    assert choice.top_tokens.tolist() == [[1, 0]]
    assert choice.top_logprobs.tolist() == [pytest.approx([math.log(0.75), math.log(0.25)])]


def test_logprobs_zero_reports_only_the_chosen_token():
    choice = choose_tokens(torch.zeros(2, 4), GenerationConfig(logprobs=0), logits=torch.zeros(2, 4))
    assert choice.logprobs.tolist() == pytest.approx([math.log(0.25)] * 2) and choice.top_tokens.shape == (2, 0)


def test_filter_logits_keeps_its_contract():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert filter_logits(logits, top_k=2).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_p=0.5).isinf().tolist() == [[False, True, True, True]]
    assert filter_logits(logits).tolist() == logits.tolist()


@pytest.mark.gpu
def test_a_decode_step_on_the_gpu_never_waits_for_the_host_and_matches_the_cpu(logits, history):
    config = GenerationConfig(do_sample=True, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2,
                              no_repeat_ngram_size=2, min_new_tokens=8, eos_token_id=4, temperature=0.8, top_k=20,
                              top_p=0.95, min_p=0.02, logprobs=3)
    on_gpu, gpu_logits = history.cuda(), logits.cuda()
    counts = counts_after(config, on_gpu)
    rows = generators(range(BATCH), "cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        scores = process_logits(gpu_logits, config, counts, on_gpu)
        choice = choose_tokens(scores, config, rows, gpu_logits)
        counts.update(choice.tokens)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_equal_scores(scores.cpu(), process_logits(logits, config, counts_after(config, history), history))
    assert choice.tokens.shape == (BATCH,) and choice.top_tokens.shape == (BATCH, 3)
