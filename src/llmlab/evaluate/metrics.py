"""Evaluation metrics (survey §7), each aggregate with a standard error.

pass@k (Chen et al. 2021), exact match with stated normalisation, SQuAD token F1, BLEU and chrF (sacrebleu),
ROUGE-1/2/L (rouge-score), multiple-choice acc / acc_norm, perplexity, word and byte perplexity, bits per byte.
The standard error of a mean is the formula s/√n (s with n − 1 in the denominator); corpus-level metrics (BLEU,
chrF, perplexities) get a seeded bootstrap over their items instead, since no formula applies.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DIGITS = str.maketrans("", "", string.digits)


@dataclass(frozen=True)
class Aggregate:
    """A metric over n items with its standard error; `method` is "formula" or "bootstrap"."""

    value: float
    stderr: float
    n: int
    method: str


# --- standard errors ---------------------------------------------------------------------------------------------

def mean_stderr(values: Sequence[float]) -> Aggregate:
    """The mean of per-item scores with the standard error s/√n (NaN for fewer than two items)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ConfigError("A metric was asked to aggregate no items at all.")
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return Aggregate(float(values.mean()), stderr, int(values.size), "formula")


def bootstrap_stderr(statistic: Callable[[list], float], items: Sequence, *, resamples: int = 1000,
                     seed: int = 0) -> Aggregate:
    """A corpus statistic of `items` with the standard deviation of it over seeded resamples with replacement."""
    items = list(items)
    if not items:
        raise ConfigError("A metric was asked to aggregate no items at all.")
    if resamples < 2:
        raise ConfigError(f"bootstrap resamples must be at least 2, got {resamples}.")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(resamples, len(items)))
    values = [statistic([items[i] for i in row]) for row in draws]
    return Aggregate(float(statistic(items)), float(np.std(values, ddof=1)), len(items), "bootstrap")


# --- pass@k ------------------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with c correct of n samples: 1 − C(n−c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ConfigError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    # C(n−c, k) / C(n, k) = ∏_{i=n−c+1}^{n} (1 − k/i): a product of terms in (0, 1], with no huge binomials.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> Aggregate:
    """pass@k averaged over problems (samples and correct counts per problem), with its standard error."""
    if len(num_samples) != len(num_correct):
        raise ConfigError(f"pass@k got {len(num_samples)} sample counts but {len(num_correct)} correct counts.")
    return mean_stderr([pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct)])


# --- exact match and token F1 ------------------------------------------------------------------------------------

def normalize_text(text: str, *, regexes_to_ignore: Sequence[str] = (), ignore_case: bool = False,
                   ignore_punctuation: bool = False, ignore_numbers: bool = False) -> str:
    """lm-eval's (and HF evaluate's) exact-match normalisation: delete each regex, then lower, then strip marks."""
    for pattern in regexes_to_ignore:
        text = re.sub(pattern, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    if ignore_numbers:
        text = text.translate(_DIGITS)
    return text


def exact_match(prediction: str, references: str | Sequence[str], **normalization) -> float:
    """1.0 when the normalised prediction equals a normalised reference (see normalize_text), else 0.0."""
    references = [references] if isinstance(references, str) else references
    predicted = normalize_text(prediction, **normalization)
    return float(any(predicted == normalize_text(ref, **normalization) for ref in references))


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD token F1 between the normalised prediction and the best of the references."""
    references = [references] if isinstance(references, str) else references
    return max(_token_f1(squad_normalize(prediction).split(), squad_normalize(ref).split()) for ref in references)


def _token_f1(predicted: list[str], reference: list[str]) -> float:
    """F1 of two token lists' multiset overlap; 1.0 if both are empty, 0.0 if one is."""
    if not predicted or not reference:
        return float(predicted == reference)
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


# --- BLEU, chrF, ROUGE -------------------------------------------------------------------------------------------

def _reference_streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout (one stream per reference set) from one list of references per hypothesis."""
    if len(hypotheses) != len(references):
        raise ConfigError(f"Got {len(hypotheses)} hypotheses but references for {len(references)}.")
    counts = {len(refs) for refs in references}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError("Every hypothesis needs the same number (at least one) of references for BLEU and chrF.")
    return [list(stream) for stream in zip(*references)]


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu's defaults, 0–100); references[i] are the references of hypotheses[i]."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), _reference_streams(hypotheses, references)).score)


def chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus chrF (sacrebleu's chrF2, 0–100); references[i] are the references of hypotheses[i]."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), _reference_streams(hypotheses, references)).score)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], **bootstrap) -> Aggregate:
    """Corpus BLEU with a bootstrap standard error over segments."""
    return bootstrap_stderr(lambda pairs: bleu(*zip(*pairs)), list(zip(hypotheses, references)), **bootstrap)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]], **bootstrap) -> Aggregate:
    """Corpus chrF with a bootstrap standard error over segments."""
    return bootstrap_stderr(lambda pairs: chrf(*zip(*pairs)), list(zip(hypotheses, references)), **bootstrap)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(prediction: str, references: str | Sequence[str], *, use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (rouge-score's tokenizer), each the best over the references."""
    from rouge_score import rouge_scorer

    references = [references] if isinstance(references, str) else references
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    scores = [scorer.score(ref, prediction) for ref in references]
    return {name: max(score[name].fmeasure for score in scores) for name in ROUGE_TYPES}


# --- multiple choice ---------------------------------------------------------------------------------------------

def multiple_choice(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """acc, acc_norm (log-likelihood per character, as lm-eval) and acc_norm_bytes (per UTF-8 byte) of a question."""
    if len(loglikelihoods) != len(choices) or not choices:
        raise ConfigError(f"A question has {len(choices)} choices but {len(loglikelihoods)} log-likelihoods.")
    if not 0 <= gold < len(choices):
        raise ConfigError(f"The gold index {gold} is not one of the {len(choices)} choices.")
    scores = np.asarray(loglikelihoods, dtype=np.float64)
    chars = np.array([max(len(choice), 1) for choice in choices], dtype=np.float64)
    bytes_ = np.array([max(len(choice.encode("utf-8")), 1) for choice in choices], dtype=np.float64)
    return {  # argmax takes the first of tied choices
        "acc": float(np.argmax(scores) == gold),
        "acc_norm": float(np.argmax(scores / chars) == gold),
        "acc_norm_bytes": float(np.argmax(scores / bytes_) == gold),
    }


# --- perplexity --------------------------------------------------------------------------------------------------

def word_count(text: str) -> int:
    """Words as lm-eval counts them for word perplexity: pieces of the text split at whitespace."""
    return len(re.split(r"\s+", text))


def byte_count(text: str) -> int:
    """UTF-8 bytes of the text, for byte perplexity and bits per byte."""
    return len(text.encode("utf-8"))


def perplexity(loglikelihood: float, count: int) -> float:
    """exp(−Σ log p / count): token, word or byte perplexity depending on what `count` counts."""
    if count <= 0:
        raise ConfigError(f"Perplexity needs a positive count of units, got {count}.")
    return math.exp(-loglikelihood / count)


def bits_per_byte(loglikelihood: float, n_bytes: int) -> float:
    """−Σ log p (natural log) / (bytes · ln 2)."""
    if n_bytes <= 0:
        raise ConfigError(f"Bits per byte needs a positive byte count, got {n_bytes}.")
    return -loglikelihood / (n_bytes * math.log(2))


def corpus_perplexity(loglikelihoods: Sequence[float], counts: Sequence[int], **bootstrap) -> Aggregate:
    """Perplexity of documents together (Σ log p over Σ units), with a bootstrap standard error over documents."""
    return bootstrap_stderr(lambda docs: perplexity(*map(sum, zip(*docs))), _documents(loglikelihoods, counts),
                            **bootstrap)


def corpus_bits_per_byte(loglikelihoods: Sequence[float], byte_counts: Sequence[int], **bootstrap) -> Aggregate:
    """Bits per byte of documents together, with a bootstrap standard error over documents."""
    return bootstrap_stderr(lambda docs: bits_per_byte(*map(sum, zip(*docs))), _documents(loglikelihoods, byte_counts),
                            **bootstrap)


def _documents(loglikelihoods: Sequence[float], counts: Sequence[int]) -> list[tuple[float, int]]:
    """(log-likelihood, count) pairs, checked to be of equal number."""
    if len(loglikelihoods) != len(counts):
        raise ConfigError(f"Got {len(loglikelihoods)} log-likelihoods but {len(counts)} counts.")
    return list(zip(loglikelihoods, counts))
