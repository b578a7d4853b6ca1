"""Quality filtering (survey §4.1.2): heuristic rules, blocklists, language identification, a
quality classifier and a perplexity filter, each a callable on one text.

Every filter is called with a document's text and returns a `Verdict(text, dropped_by)`:
`dropped_by` is None to keep the document (with `text`, which line-level rules may have
cleaned) or the name of the rule that dropped it. `apply_filters` runs a chain over a stream
of documents `{"text": ..., "meta": {...}}` and records the rule in `meta["dropped_by"]`.

The rules are hand-written because datatrove's versions need nltk and its downloadable
tokenizer models; the thresholds and semantics follow datatrove and the papers, cited per rule.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from llmlab.data.languages import (CHARACTER_WORD_LANGUAGES, CLOSING_MARKS, PUNCTUATION, SENTENCE_TERMINALS,
                                   STOP_WORDS, count_multilingual_sentences, multilingual_words, normalise_language)
from llmlab.errors import ConfigError, DataError
from llmlab.fields import from_mapping


class Verdict(NamedTuple):
    """The outcome of a filter: the (possibly cleaned) text and the rule that dropped it, or None."""

    text: str
    dropped_by: str | None = None
    annotations: dict | None = None


Filter = Callable[[str], Verdict]


def words_of(text: str) -> list[str]:
    """The words of a text: whitespace-separated tokens with leading/trailing punctuation removed, empty ones dropped."""
    return [word for word in (token.strip(PUNCTUATION) for token in text.split()) if word]


def is_english(language: str | None) -> bool:
    """Whether a rule set judges by the published (English) rules: the language is English or unknown."""
    return normalise_language(language) in (None, "en")


# ---------------------------------------------------------------------------------------------
# Gopher (Rae et al. 2021, "Scaling Language Models", appendix A.1.1 and table A1)


GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass
class GopherQuality:
    """Gopher's quality rules; defaults are the paper's thresholds (datatrove's GopherQualityFilter)."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3
    max_mean_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS
    language: str | None = None  # None or "en": English words; any other: words by script (see rule_set)

    def __post_init__(self) -> None:
        self._english = is_english(self.language)

    def __call__(self, text: str) -> Verdict:
        """Drop the text if it breaks any Gopher quality rule."""
        return Verdict(text, self.rule_broken(text))

    def rule_broken(self, text: str) -> str | None:
        """The first Gopher quality rule the text breaks, or None."""
        if self._english:
            tokens, words = [token for token in text.split() if token.strip(PUNCTUATION)], words_of(text)
        else:
            tokens = words = multilingual_words(text)
        if len(words) < self.min_words:
            return "gopher_min_words"
        if len(words) > self.max_words:
            return "gopher_max_words"
        mean_length = sum(map(len, words)) / len(words)
        if mean_length < self.min_mean_word_length:
            return "gopher_min_mean_word_length"
        if mean_length > self.max_mean_word_length:
            return "gopher_max_mean_word_length"
        if text.count("#") / len(words) > self.max_symbol_word_ratio:
            return "gopher_hash_ratio"
        if (text.count("...") + text.count("…")) / len(words) > self.max_symbol_word_ratio:
            return "gopher_ellipsis_ratio"
        lines = text.splitlines() or [""]
        bullets = sum(line.lstrip().startswith(("•", "-", "*", "‣", "◦")) for line in lines)
        if bullets / len(lines) > self.max_bullet_lines_ratio:
            return "gopher_bullet_lines"
        ellipsis_lines = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        if ellipsis_lines / len(lines) > self.max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines"
        alphabetic = sum(any(character.isalpha() for character in token) for token in tokens)
        if alphabetic / len(tokens) < self.min_alpha_words_ratio:
            return "gopher_alpha_words"
        stop_words = set(self.stop_words)
        # datatrove counts occurrences of the stop words, not distinct ones
        if sum(word.lower() in stop_words for word in words) < self.min_stop_words:
            return "gopher_stop_words"
        return None


def _duplicates(elements: Sequence[str]) -> tuple[int, int]:
    """How many elements repeat an earlier one, and how many characters those repeats hold."""
    seen: set[str] = set()
    count = characters = 0
    for element in elements:
        if element in seen:
            count += 1
            characters += len(element)
        else:
            seen.add(element)
    return count, characters


class WordNgrams:
    """Exact integer ids of a text's word n-grams, built one n at a time with numpy (no tuples, no hashing)."""

    def __init__(self, words: Sequence[str]):
        vocabulary: dict[str, int] = {}
        self.word_ids = np.fromiter((vocabulary.setdefault(word, len(vocabulary)) for word in words), np.int64,
                                    count=len(words))
        self.lengths = np.fromiter(map(len, words), np.int64, count=len(words))
        self.total = int(self.lengths.sum())
        self._ids = [self.word_ids]  # _ids[n - 1]: the id of the n-gram starting at each position
        self._vocabulary_size = max(len(vocabulary), 1)

    def ids(self, n: int) -> np.ndarray:
        """The id of the n-gram starting at each of the len(words) - n + 1 positions (equal n-grams, equal ids)."""
        while len(self._ids) < n:
            shorter = self._ids[-1]
            pairs = shorter[:-1] * self._vocabulary_size + self.word_ids[len(self._ids):]
            self._ids.append(np.unique(pairs, return_inverse=True)[1].reshape(-1))
        return self._ids[n - 1]

    def longest_repeat(self) -> int:
        """The length of the longest n-gram that occurs more than once (0 when no word does)."""
        n = 0
        while n < len(self.word_ids) and int(self.ids(n + 1).max()) + 1 < len(self.ids(n + 1)):
            n += 1
        return n

    def top_ngram_character_fraction(self, n: int) -> float:
        """Characters in the most frequent n-gram (times its count; the first seen among equals) over all."""
        if len(self.word_ids) < n or self.total == 0:
            return 0.0
        ids = self.ids(n)
        counts = np.bincount(ids)[ids]
        top = int(counts.max())
        if top < 2:
            return 0.0
        start = int(np.argmax(counts == top))
        return int(self.lengths[start : start + n].sum()) * top / self.total

    def duplicate_ngram_character_fraction(self, n: int) -> float:
        """Characters of the words covered by any n-gram that occurs more than once, over all word characters."""
        if len(self.word_ids) < n or self.total == 0:
            return 0.0
        ids = self.ids(n)
        starts = np.nonzero(np.bincount(ids)[ids] > 1)[0]
        depth = np.bincount(starts, minlength=len(self.word_ids) + 1) - np.bincount(
            starts + n, minlength=len(self.word_ids) + 1)
        covered = np.cumsum(depth[:-1]) > 0
        return int(self.lengths[covered].sum()) / self.total


@dataclass
class GopherRepetition:
    """Gopher's repetition rules with table A1's thresholds; n-gram fractions count word characters as RedPajama-V2 does."""

    max_duplicate_line_fraction: float = 0.30
    max_duplicate_paragraph_fraction: float = 0.30
    max_duplicate_line_char_fraction: float = 0.20
    max_duplicate_paragraph_char_fraction: float = 0.20
    top_ngram_thresholds: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    duplicate_ngram_thresholds: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10),
    )
    language: str | None = None  # None or "en": English words; any other: words by script

    def __post_init__(self) -> None:
        self._words = words_of if is_english(self.language) else multilingual_words

    def __call__(self, text: str) -> Verdict:
        """Drop the text if it repeats itself beyond any Gopher repetition threshold."""
        return Verdict(text, self.rule_broken(text))

    def rule_broken(self, text: str) -> str | None:
        """The first Gopher repetition rule the text breaks, or None."""
        if not text:
            return None
        paragraphs = re.split(r"\n{2,}", text.strip())
        count, characters = _duplicates(paragraphs)
        if count / len(paragraphs) > self.max_duplicate_paragraph_fraction:
            return "gopher_duplicate_paragraphs"
        if characters / len(text) > self.max_duplicate_paragraph_char_fraction:
            return "gopher_duplicate_paragraph_chars"
        lines = [line for line in text.splitlines() if line.strip()] or [""]
        count, characters = _duplicates(lines)
        if count / len(lines) > self.max_duplicate_line_fraction:
            return "gopher_duplicate_lines"
        if characters / len(text) > self.max_duplicate_line_char_fraction:
            return "gopher_duplicate_line_chars"
        ngrams = WordNgrams(self._words(text.lower()))
        longest = ngrams.longest_repeat()  # longer n-grams never repeat: their fractions are 0
        for n, threshold in self.top_ngram_thresholds:
            if n <= longest and ngrams.top_ngram_character_fraction(n) > threshold:
                return f"gopher_top_{n}gram"
        for n, threshold in self.duplicate_ngram_thresholds:
            if n <= longest and ngrams.duplicate_ngram_character_fraction(n) > threshold:
                return f"gopher_duplicate_{n}grams"
        return None


# ---------------------------------------------------------------------------------------------
# C4 (Raffel et al. 2020, section 2.2; constants from tensorflow_datasets' c4_utils.py)


C4_END_MARKS = (".", "?", "!", '"')
C4_POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def count_sentences(text: str) -> int:
    """Sentences in a text, counted as runs of . ! ? followed by whitespace or the end (nltk's punkt needs a download)."""
    return len(SENTENCE_END.findall(text))


@dataclass
class C4Rules:
    """C4's line and page rules: the page keeps only the lines that pass; tfds c4_utils' defaults (5 words/line, 3 sentences/page)."""

    min_words_per_line: int = 5
    min_sentences: int = 3
    max_word_length: int = 1000
    remove_citations: bool = True
    end_marks: tuple[str, ...] = C4_END_MARKS
    language: str | None = None  # None or "en": whitespace words, ASCII sentence ends; any other: by script

    def __post_init__(self) -> None:
        english = is_english(self.language)
        self._words = str.split if english else multilingual_words
        self._count_sentences = count_sentences if english else count_multilingual_sentences

    def __call__(self, text: str) -> Verdict:
        """Keep the lines that pass C4's line rules; drop the page if a page rule fails."""
        kept = []
        for line in text.splitlines():
            line = line.strip()
            if any(len(word) > self.max_word_length for word in self._words(line)):
                continue
            if self.remove_citations:
                line = C4_CITATION.sub("", line)
            if not line.endswith(self.end_marks) or line.endswith("..."):
                continue
            if len(self._words(line)) < self.min_words_per_line:
                continue
            lowered = line.lower()
            if "lorem ipsum" in lowered:
                return Verdict(text, "c4_lorem_ipsum")
            if "javascript" in lowered:
                continue
            if "{" in line:
                return Verdict(text, "c4_curly_bracket")
            if any(phrase in lowered for phrase in C4_POLICY_SUBSTRINGS):
                continue
            kept.append(line)
        cleaned = "\n".join(kept)
        if self._count_sentences(cleaned) < self.min_sentences:
            return Verdict(text, "c4_min_sentences")
        return Verdict(cleaned)


# ---------------------------------------------------------------------------------------------
# FineWeb (Penedo et al. 2024, section 3.5; datatrove's FineWebQualityFilter)


FINEWEB_END_MARKS = (".", "'", '"', "!", "?")


@dataclass
class FineWebRules:
    """FineWeb's custom rules: line punctuation, short lines, duplicated-line characters, list-likeness."""

    min_line_punctuation_ratio: float = 0.12
    max_short_line_ratio: float = 0.67
    short_line_length: int = 30
    # the paper says 0.1; datatrove's class default is 0.01
    max_duplicate_line_char_ratio: float = 0.1
    max_newline_word_ratio: float = 0.3
    line_end_marks: tuple[str, ...] = FINEWEB_END_MARKS
    language: str | None = None  # None or "en": English words; any other: words by script

    def __post_init__(self) -> None:
        self._words = words_of if is_english(self.language) else multilingual_words

    def __call__(self, text: str) -> Verdict:
        """Drop the text if it breaks a FineWeb rule."""
        return Verdict(text, self.rule_broken(text))

    def rule_broken(self, text: str) -> str | None:
        """The first FineWeb rule the text breaks, or None."""
        lines = text.split("\n")
        punctuated = sum(line.endswith(self.line_end_marks) for line in lines) / len(lines)
        if punctuated <= self.min_line_punctuation_ratio:
            return "fineweb_line_punctuation"
        short = sum(len(line) <= self.short_line_length for line in lines) / len(lines)
        if short >= self.max_short_line_ratio:
            return "fineweb_short_lines"
        characters = len(text.replace("\n", ""))
        duplicate_characters = _duplicates([line for line in lines if line.strip()])[1]
        if characters and duplicate_characters / characters >= self.max_duplicate_line_char_ratio:
            return "fineweb_duplicate_line_chars"
        words = self._words(text)
        if text.count("\n") / max(len(words), 1) > self.max_newline_word_ratio:
            return "fineweb_list_like"
        return None


# FineWeb's order of the heuristic rule sets
HEURISTIC_RULE_SETS = {
    "gopher-repetition": GopherRepetition,
    "gopher-quality": GopherQuality,
    "c4": C4Rules,
    "fineweb": FineWebRules,
}


LanguageRules = dict[str, dict[str, dict]]  # {language: {rule set: {field: value}}}


def _check_rule_set(name: str) -> type:
    """The class of the named heuristic rule set, or a ConfigError listing the known ones."""
    if name not in HEURISTIC_RULE_SETS:
        raise ConfigError(f"unknown rule set {name!r}; choose from {', '.join(HEURISTIC_RULE_SETS)}.")
    return HEURISTIC_RULE_SETS[name]


def language_defaults(language: str) -> dict[str, dict]:
    """Each rule set's fields for a language other than English, after FineWeb-2: sentence ends of every script,
    the language's stop words (no stop-word rule where llmlab has no list), no short-line rule, and one-character
    mean word lengths where a letter is a word."""
    line_ends = tuple(SENTENCE_TERMINALS + CLOSING_MARKS)
    gopher = {"stop_words": STOP_WORDS[language]} if language in STOP_WORDS else {"min_stop_words": 0}
    if language in CHARACTER_WORD_LANGUAGES:
        gopher["min_mean_word_length"] = 1  # FineWeb-2's Chinese minimum
    return {
        "gopher-repetition": {},
        "gopher-quality": gopher,
        "c4": {"end_marks": C4_END_MARKS + line_ends},
        # FineWeb-2 turns the short-line rule off for every language
        "fineweb": {"line_end_marks": FINEWEB_END_MARKS + line_ends, "max_short_line_ratio": math.inf},
    }


def rule_set(name: str, language: str | None = None, overrides: dict | None = None) -> Filter:
    """The named heuristic rule set for a language: the published rules for English or an unknown language, else
    that language's words, punctuation, stop words and thresholds (language_defaults); OVERRIDES on top."""
    language = normalise_language(language)
    fields = {} if is_english(language) else {**language_defaults(language)[name], "language": language}
    return _check_rule_set(name)(**{**fields, **(overrides or {})})


class LanguageAwareRules:
    """A heuristic rule set that judges each document by the rules of its language (apply_filters passes meta["language"])."""

    def __init__(self, name: str, language_rules: LanguageRules | None = None):
        _check_rule_set(name)
        self.name, self.language_rules = name, language_rules or {}
        self._by_language: dict[str | None, Filter] = {}

    def for_language(self, language: str | None) -> Filter:
        """The rule set for LANGUAGE with its overrides from language_rules, built once."""
        rules = self._by_language.get(language)
        if rules is None:
            key = normalise_language(language)
            rules = rule_set(self.name, key, self.language_rules.get(key, {}).get(self.name))
            self._by_language[language] = rules
        return rules

    def __call__(self, text: str) -> Verdict:
        """Judge a text of unknown language by the published (English) rules."""
        return self.for_language(None)(text)


def heuristic_filters(names: Iterable[str] = tuple(HEURISTIC_RULE_SETS), language_rules: LanguageRules | None = None) -> list[Filter]:
    """The named heuristic rule sets in the order given, each judging a document by its language's rules."""
    return [LanguageAwareRules(name, language_rules) for name in names]


def check_language_rules(language_rules, where: str = "language_rules") -> LanguageRules:
    """Per-language overrides {language: {rule set: {field: value}}} with their values coerced, or a YAML/JSON file of
    them; a ConfigError names an unknown rule set or field."""
    if isinstance(language_rules, (str, os.PathLike)):
        language_rules = _read_mapping(language_rules)
    if not isinstance(language_rules, dict):
        raise ConfigError(f"{where} must be a mapping {{language: {{rule set: {{field: value}}}}}}.")
    checked: LanguageRules = {}
    for language, rule_sets in language_rules.items():
        if not isinstance(rule_sets, dict):
            raise ConfigError(f"{where}.{language} must be a mapping {{rule set: {{field: value}}}}.")
        checked[normalise_language(str(language))] = {
            name: _checked_fields(name, fields, f"{where}.{language}.{name}") for name, fields in rule_sets.items()}
    return checked


def _checked_fields(name: str, fields, where: str) -> dict:
    """A rule set's field overrides with their values coerced to the fields' types."""
    rules = from_mapping(_check_rule_set(name), fields, where)
    return {field: getattr(rules, field) for field in fields or {}}


def _read_mapping(path: str | os.PathLike):
    """The YAML (or JSON) data in a file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except OSError as error:
        raise ConfigError(f"the language rules {path} cannot be read ({error.strerror}).") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"the language rules {path} are not valid YAML ({str(error).splitlines()[0]}).") from None


# ---------------------------------------------------------------------------------------------
# Blocklists and language identification


@dataclass
class Blocklist:
    """Drop documents containing any of the given words or phrases (whole words, case-insensitive)."""

    words: Iterable[str]
    name: str = "blocklist"
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        terms = sorted({word.strip().lower() for word in self.words if word.strip()}, key=len, reverse=True)
        if not terms:
            raise ConfigError("the blocklist is empty; give at least one word.")
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, terms)) + r")(?!\w)", re.IGNORECASE)

    @classmethod
    def from_file(cls, path: str | os.PathLike, name: str = "blocklist") -> "Blocklist":
        """A blocklist from a file with one word or phrase per line (# starts a comment line)."""
        try:
            with open(path, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read the word list {path}: {error}.") from error
        return cls(lines, name=name)

    def __call__(self, text: str) -> Verdict:
        """Drop the text if it contains a blocked word."""
        return Verdict(text, self.name if self.pattern.search(text) else None)


_LANGUAGE_IDENTIFIER = None


def identify_language(text: str) -> tuple[str, float]:
    """The most likely language (ISO 639-1) of a text and its probability, by py3langid's bundled model."""
    global _LANGUAGE_IDENTIFIER  # the model loads once per process (about 0.3 s); it has no mutable state
    if _LANGUAGE_IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LANGUAGE_IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    language, probability = _LANGUAGE_IDENTIFIER.classify(text.replace("\n", " "))
    return language, float(probability)


# FineWeb keeps English with a fastText score >= 0.65; the same default serves every language here.
DEFAULT_LANGUAGE_THRESHOLD = 0.65


@dataclass
class LanguageFilter:
    """Keep documents in the given languages whose probability reaches that language's threshold."""

    thresholds: dict[str, float] = field(default_factory=lambda: {"en": DEFAULT_LANGUAGE_THRESHOLD})

    def __call__(self, text: str) -> Verdict:
        """Drop the text unless its language is wanted and identified confidently enough; annotate language and score."""
        language, probability = identify_language(text)
        annotations = {"language": language, "language_score": round(probability, 4)}
        if language not in self.thresholds:
            return Verdict(text, "language", annotations)
        if probability < self.thresholds[language]:
            return Verdict(text, "language_score", annotations)
        return Verdict(text, None, annotations)


def parse_language_thresholds(spec: str) -> dict[str, float]:
    """Parse "en,fr:0.8,de" into {"en": 0.65, "fr": 0.8, "de": 0.65}."""
    thresholds = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        language, _, value = item.partition(":")
        try:
            thresholds[language] = float(value) if value else DEFAULT_LANGUAGE_THRESHOLD
        except ValueError:
            raise ConfigError(f"language threshold {item!r} is not LANGUAGE or LANGUAGE:NUMBER.") from None
    if not thresholds:
        raise ConfigError("no language given; use e.g. --languages en or en:0.8,fr.")
    return thresholds


# ---------------------------------------------------------------------------------------------
# Quality classifier (Brown et al. 2020, GPT-3 appendix A): hashed n-gram features + logistic regression


@dataclass
class QualityClassifier:
    """A logistic-regression quality classifier on hashed word uni- and bigrams (scikit-learn)."""

    n_features: int = 2**18
    ngram_range: tuple[int, int] = (1, 2)
    coefficients: np.ndarray | None = None
    intercept: float = 0.0

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(n_features=self.n_features, ngram_range=self.ngram_range, alternate_sign=False, norm="l2")

    def fit(self, good: Sequence[str], bad: Sequence[str], regularisation: float = 1.0, seed: int = 0) -> "QualityClassifier":
        """Train on a good (label 1) and a bad (label 0) corpus."""
        from sklearn.linear_model import LogisticRegression

        if not good or not bad:
            raise DataError("the quality classifier needs at least one good and one bad document.")
        features = self._vectorizer().transform(list(good) + list(bad))
        labels = np.array([1] * len(good) + [0] * len(bad))
        model = LogisticRegression(C=regularisation, max_iter=1000, random_state=seed).fit(features, labels)
        self.coefficients = model.coef_[0].astype(np.float32)
        self.intercept = float(model.intercept_[0])
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text is "good"."""
        if self.coefficients is None:
            raise ConfigError("the quality classifier is not trained; call fit() or load() first.")
        logits = self._vectorizer().transform(list(texts)) @ self.coefficients + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))

    def save(self, path: str | os.PathLike) -> None:
        """Save as a .npz of arrays (no pickle)."""
        with open(path, "wb") as stream:
            np.savez(stream, coefficients=self.coefficients, intercept=self.intercept,
                     n_features=self.n_features, ngram_range=np.array(self.ngram_range))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QualityClassifier":
        """Load a classifier saved by save()."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return cls(n_features=int(arrays["n_features"]), ngram_range=tuple(int(v) for v in arrays["ngram_range"]),
                           coefficients=arrays["coefficients"], intercept=float(arrays["intercept"]))
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"cannot load the quality classifier {path}: {error}.") from error


@dataclass
class ClassifierFilter:
    """Keep a document if its quality score passes a threshold, or GPT-3's Pareto test: rng.pareto(alpha) > 1 - score."""

    classifier: QualityClassifier
    threshold: float = 0.5
    pareto_alpha: float | None = None
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.pareto_alpha is not None and self.rng is None:
            self.rng = np.random.default_rng(0)

    def __call__(self, text: str) -> Verdict:
        """Drop the text if the classifier judges it low quality."""
        score = float(self.classifier.scores([text])[0])
        if self.pareto_alpha is not None:
            keep = self.rng.pareto(self.pareto_alpha) > 1 - score
        else:
            keep = score >= self.threshold
        return Verdict(text, None if keep else "quality_classifier", {"quality_score": round(score, 4)})


# GPT-3 appendix A: "we chose alpha = 9"
GPT3_PARETO_ALPHA = 9.0


# ---------------------------------------------------------------------------------------------
# Perplexity under a word n-gram model


BOS, EOS, UNK = "<s>", "</s>", "<unk>"


@dataclass
class NGramModel:
    """A word n-gram language model with add-k smoothing (k=1 is Laplace); unseen words map to <unk>."""

    order: int = 3
    k: float = 0.1
    counts: dict = field(default_factory=dict)
    context_counts: dict = field(default_factory=dict)
    vocabulary: set = field(default_factory=set)

    def tokens(self, text: str) -> list[str]:
        """Lower-cased words of a text."""
        return words_of(text.lower())

    def fit(self, texts: Iterable[str]) -> "NGramModel":
        """Count the n-grams of the texts (each padded with order-1 <s> and one </s>)."""
        documents = [self.tokens(text) for text in texts]
        self.vocabulary = {word for words in documents for word in words} | {EOS, UNK}
        counts: Counter = Counter()
        context_counts: Counter = Counter()
        for words in documents:
            padded = [BOS] * (self.order - 1) + words + [EOS]
            for i in range(self.order - 1, len(padded)):
                context = tuple(padded[i - self.order + 1 : i])
                counts[context + (padded[i],)] += 1
                context_counts[context] += 1
        self.counts, self.context_counts = dict(counts), dict(context_counts)
        return self

    def log_probability(self, context: tuple[str, ...], word: str) -> float:
        """Natural log of P(word | context) = (c(context, word) + k) / (c(context) + k |V|)."""
        return math.log((self.counts.get(context + (word,), 0) + self.k)
                        / (self.context_counts.get(context, 0) + self.k * len(self.vocabulary)))

    def perplexity(self, text: str) -> float:
        """exp of the mean negative log-probability per word (including </s>)."""
        if not self.vocabulary:
            raise ConfigError("the n-gram model is not trained; call fit() or load() first.")
        words = [word if word in self.vocabulary else UNK for word in self.tokens(text)]
        padded = [BOS] * (self.order - 1) + words + [EOS]
        total = sum(self.log_probability(tuple(padded[i - self.order + 1 : i]), padded[i])
                    for i in range(self.order - 1, len(padded)))
        return math.exp(-total / (len(padded) - self.order + 1))

    def save(self, path: str | os.PathLike) -> None:
        """Save as JSON."""
        data = {"order": self.order, "k": self.k, "vocabulary": sorted(self.vocabulary),
                "counts": [[list(key), value] for key, value in self.counts.items()]}
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(data, stream)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NGramModel":
        """Load a model saved by save(); context counts are recomputed."""
        try:
            with open(path, encoding="utf-8") as stream:
                data = json.load(stream)
            model = cls(order=data["order"], k=data["k"], vocabulary=set(data["vocabulary"]))
            model.counts = {tuple(key): value for key, value in data["counts"]}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"cannot load the n-gram model {path}: {error}.") from error
        context_counts: Counter = Counter()
        for key, value in model.counts.items():
            context_counts[key[:-1]] += value
        model.context_counts = dict(context_counts)
        return model


@dataclass
class CheckpointLanguageModel:
    """Per-token perplexity under a decoder llmlab checkpoint and its tokenizer.json (a stronger reference than n-grams)."""

    model: object
    tokenizer: object

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CheckpointLanguageModel":
        """Load an llmlab or Hugging Face checkpoint directory that holds a tokenizer.json."""
        from llmlab.api import load
        from llmlab.data.tokenizer import load_tokenizer

        model = load(path)
        if model.config.arch != "decoder":
            raise ConfigError(f"perplexity filtering needs a decoder checkpoint, but {path} is {model.config.arch}.")
        return cls(model, load_tokenizer(path))

    def perplexity(self, text: str) -> float:
        """exp of the mean negative log-likelihood of the text's tokens after the first, in windows of max_seq_len."""
        import torch

        ids = self.tokenizer.encode(text).ids
        if len(ids) < 2:
            return math.inf
        window = self.model.config.max_seq_len
        total, predicted = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(ids) - 1, window):
                chunk = torch.tensor([ids[start : start + window + 1]])
                logits = self.model(chunk[:, :-1]).logits[0].float()
                total += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
                predicted += chunk.shape[1] - 1
        return math.exp(total / predicted)


@dataclass
class PerplexityFilter:
    """Drop documents whose perplexity under a reference model exceeds a threshold (CCNet-style)."""

    model: NGramModel | CheckpointLanguageModel
    max_perplexity: float

    @classmethod
    def from_percentile(cls, model: NGramModel | CheckpointLanguageModel, reference_texts: Iterable[str], percentile: float) -> "PerplexityFilter":
        """A filter whose threshold is the given percentile (0-100) of the perplexities of reference texts."""
        perplexities = [model.perplexity(text) for text in reference_texts]
        if not perplexities:
            raise DataError("no reference texts to compute a perplexity percentile from.")
        return cls(model, float(np.percentile(perplexities, percentile)))

    def __call__(self, text: str) -> Verdict:
        """Drop the text if its perplexity is above the threshold."""
        perplexity = self.model.perplexity(text)
        dropped_by = "perplexity" if perplexity > self.max_perplexity else None
        return Verdict(text, dropped_by, {"perplexity": round(perplexity, 2)})


# ---------------------------------------------------------------------------------------------
# Running filters over a stream


def apply_filters(
    documents: Iterable[dict], filters: Sequence[Filter], counts: Counter | None = None, keep_dropped: bool = False
) -> Iterator[dict]:
    """Yield the documents that pass every filter (text cleaned by line rules); count drops per rule in COUNTS.

    Heuristic rule sets judge each document by the rules of meta["language"] (English when absent). Filters'
    annotations (language, scores) go into meta. With keep_dropped, dropped documents are
    yielded too, with meta["dropped_by"] naming the rule.
    """
    counts = counts if counts is not None else Counter()
    for document in documents:
        text, dropped_by, meta = document["text"], None, dict(document.get("meta", {}))
        for rule in filters:
            if isinstance(rule, LanguageAwareRules):  # the language from the input or an earlier LanguageFilter
                rule = rule.for_language(meta.get("language"))
            text, dropped_by, annotations = rule(text)
            meta.update(annotations or {})
            if dropped_by is not None:
                break
        if dropped_by is None:
            counts["kept"] += 1
            yield {**document, "text": text, "meta": meta}
        else:
            counts[dropped_by] += 1
            if keep_dropped:
                yield {**document, "meta": {**meta, "dropped_by": dropped_by}}


def build_filters(options) -> list:
    """The chain of filters that options (`llmlab data filter`'s arguments or a recipe's filter stage) ask for."""
    chain = []
    if options.languages:
        chain.append(LanguageFilter(parse_language_thresholds(options.languages)))
    names = [part.strip() for part in options.rules.split(",") if part.strip() not in ("", "none")]
    language_rules = getattr(options, "language_rules", None)
    chain.extend(heuristic_filters(names, check_language_rules(language_rules) if language_rules else None))
    chain.extend(Blocklist.from_file(path) for path in options.blocklist)
    if options.classifier:
        classifier = QualityClassifier.load(options.classifier)
        chain.append(ClassifierFilter(
            classifier, threshold=options.classifier_threshold,
            pareto_alpha=GPT3_PARETO_ALPHA if options.pareto else None,
            rng=np.random.default_rng(options.seed)))
    references = [name for name in ("ngram_model", "reference_model") if getattr(options, name)]
    if len(references) > 1 or bool(references) != (options.max_perplexity is not None):
        raise ConfigError("max_perplexity needs exactly one of ngram_model and reference_model, and they need it.")
    if options.ngram_model:
        chain.append(PerplexityFilter(NGramModel.load(options.ngram_model), options.max_perplexity))
    if options.reference_model:
        reference = CheckpointLanguageModel.load(options.reference_model)
        chain.append(PerplexityFilter(reference, options.max_perplexity))
    return chain
