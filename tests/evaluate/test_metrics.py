"""Metrics against hand-worked cases, the closed-form pass@k and sacrebleu's documented example."""

import math
from fractions import Fraction
from math import comb

import pytest

from llmlab.errors import ConfigError
from llmlab.evaluate import metrics


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),  # 1 − C(3,1)/C(5,1) = 1 − 3/5
    (5, 2, 2, 0.7),  # 1 − C(3,2)/C(5,2) = 1 − 3/10
    (5, 2, 4, 1.0),  # fewer than k wrong samples: some draw of k always holds a correct one
    (10, 3, 5, 1 - 21 / 252),
    (7, 0, 3, 0.0),
    (7, 7, 1, 1.0),
])
def test_pass_at_k_hand_worked(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(200, 13, 1), (200, 13, 10), (200, 13, 100), (1000, 1, 500)])
def test_pass_at_k_equals_the_exact_binomial_formula(n, c, k):
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert metrics.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_mean_pass_at_k_and_its_stderr():
    result = metrics.mean_pass_at_k([5, 5], [2, 0], 2)  # per problem 0.7 and 0.0
    assert result.value == pytest.approx(0.35)
    assert result.stderr == pytest.approx(math.sqrt(2 * 0.35**2) / math.sqrt(2))  # s = sqrt(Σ(x−x̄)²/(n−1))
    with pytest.raises(ConfigError, match="k=6"):
        metrics.pass_at_k(5, 2, 6)


def test_mean_stderr_formula():
    result = metrics.mean_stderr([1, 0, 1, 1])  # mean 0.75; s² = (3·0.0625 + 0.5625)/3 = 0.25; s/√4 = 0.25
    assert (result.value, result.stderr, result.n, result.method) == (0.75, pytest.approx(0.25), 4, "formula")
    assert math.isnan(metrics.mean_stderr([1.0]).stderr)


def test_bootstrap_is_seeded_and_zero_for_constant_items():
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    a = metrics.bootstrap_stderr(mean, [1, 0, 1, 1, 0, 1], seed=3)
    assert a == metrics.bootstrap_stderr(mean, [1, 0, 1, 1, 0, 1], seed=3)
    assert a.stderr == pytest.approx(metrics.mean_stderr([1, 0, 1, 1, 0, 1]).stderr * math.sqrt(5 / 6), rel=0.15)
    assert metrics.bootstrap_stderr(mean, [2, 2, 2]).stderr == 0.0


def test_exact_match_with_stated_normalisation():
    assert metrics.exact_match("Paris", "paris") == 0.0
    assert metrics.exact_match("Paris", "paris", ignore_case=True) == 1.0
    assert metrics.exact_match("paris!", ["london", "paris"], ignore_punctuation=True) == 1.0
    gsm8k = dict(regexes_to_ignore=[",", r"\$", "(?s).*#### ", r"\.$"], ignore_case=True)
    assert metrics.exact_match("$1,000.", "so 10 * 100 = 1000\n#### 1000", **gsm8k) == 1.0
    assert metrics.exact_match(" 1000", "1000") == 0.0  # no stripping unless asked


def test_token_f1_squad_style():
    # articles dropped: ["cat", "sat"] against ["cat", "sat", "down"]: P = 1, R = 2/3, F1 = 0.8
    assert metrics.token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)
    assert metrics.token_f1("dog", ["cat", "Dog!"]) == 1.0
    assert metrics.token_f1("the", "a") == 1.0  # both empty after normalisation
    assert metrics.token_f1("cat", "the") == 0.0


def test_bleu_on_sacrebleus_documented_example():
    hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    streams = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
               ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    per_segment = [list(refs) for refs in zip(*streams)]
    assert round(metrics.bleu(hypotheses, per_segment), 2) == 48.53
    aggregate = metrics.corpus_bleu(hypotheses, per_segment, resamples=50)
    assert round(aggregate.value, 2) == 48.53 and aggregate.method == "bootstrap" and aggregate.stderr > 0
    assert round(metrics.chrf(hypotheses, per_segment), 2) == 59.73  # chrF2 in sacrebleu's README
    assert metrics.chrf(["a b c"], [["a b c"]]) == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="same number"):
        metrics.bleu(["a", "b"], [["a"], ["b", "c"]])


def test_rouge_hand_worked():
    scores = metrics.rouge("the cat sat on the mat", "the cat is on the mat")
    assert scores["rouge1"] == pytest.approx(5 / 6)  # the×2, cat, on, mat of 6 tokens each
    assert scores["rouge2"] == pytest.approx(3 / 5)  # "the cat", "on the", "the mat" of 5 bigrams each
    assert scores["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat on the mat"
    assert metrics.rouge("a b", ["x y", "a b"])["rouge1"] == 1.0


def test_multiple_choice_acc_and_acc_norm_hand_computed():
    # Per character: −3/19 > −2.5/3, so acc_norm picks the long choice 0 while acc picks choice 1.
    assert metrics.multiple_choice([-3.0, -2.5], [" a very long answer", " no"], gold=0) == {
        "acc": 0.0, "acc_norm": 1.0, "acc_norm_bytes": 1.0}
    # " été" is 4 characters but 6 bytes, " ete!" 5 of each: −2/4 < −2.4/5 but −2/6 > −2.4/5.
    assert metrics.multiple_choice([-2.0, -2.4], [" été", " ete!"], gold=0) == {
        "acc": 1.0, "acc_norm": 0.0, "acc_norm_bytes": 1.0}
    with pytest.raises(ConfigError, match="gold index 2"):
        metrics.multiple_choice([-1.0, -2.0], ["a", "b"], gold=2)


def test_perplexities_and_bits_per_byte():
    assert metrics.perplexity(-10.0, 5) == pytest.approx(math.e**2)
    assert metrics.bits_per_byte(-8 * math.log(2), 4) == pytest.approx(2.0)
    assert metrics.word_count("one two  three\nfour") == 4
    assert metrics.byte_count("été") == 5
    corpus = metrics.corpus_perplexity([-4.0, -6.0], [2, 3], resamples=20)
    assert corpus.value == pytest.approx(math.e**2) and corpus.n == 2  # (−4 − 6) / (2 + 3) = −2
    bpb = metrics.corpus_bits_per_byte([-math.log(2), -3 * math.log(2)], [1, 1], resamples=20)
    assert bpb.value == pytest.approx(2.0) and bpb.stderr > 0
    with pytest.raises(ConfigError, match="positive"):
        metrics.perplexity(-1.0, 0)
