"""Decontamination (GPT-3, Brown et al. 2020, appendix C): drop or flag training documents that share
a long word n-gram (13 words by default) with an evaluation set.

Texts are normalised before comparing (lower-cased, punctuation removed, split into words), so
that formatting differences do not hide an overlap. Evaluation files are JSONL or JSONL.gz with
known fields: GSM8K's question/answer, HumanEval's prompt/canonical_solution, or text.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.data.jsonl import ReadCounts, read_records
from llmlab.errors import ConfigError, DataError

DEFAULT_NGRAM = 13
# tried in order; the first group whose fields are all present gives an example's texts
EVAL_FIELD_GROUPS = (("question", "answer"), ("prompt", "canonical_solution"), ("text",), ("question",), ("prompt",))
WORD = re.compile(r"\w+")


def normalized_words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return WORD.findall(text.lower())


def ngrams(words: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """The word n-grams of a word list."""
    return (tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def eval_texts(record: dict, fields: Iterable[str] | None = None) -> list[str]:
    """The texts of one evaluation example: the given fields, or the first known field group it has."""
    groups = [tuple(fields)] if fields else EVAL_FIELD_GROUPS
    for group in groups:
        if all(isinstance(record.get(name), str) for name in group):
            return [record[name] for name in group]
    return []


@dataclass
class ContaminationIndex:
    """The set of word n-grams of one or more evaluation sets, remembering which set each came from."""

    n: int = DEFAULT_NGRAM
    # keyed by the n-gram's hash: a quarter of the memory of the tuples, collisions negligible at 64 bits
    owners: dict[int, str] = field(default_factory=dict)
    examples: Counter = field(default_factory=Counter)
    too_short: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"the n-gram length must be at least 1, got {self.n}.")

    def add_text(self, text: str, name: str) -> None:
        """Index one evaluation text under a set's name; texts shorter than n words are counted and ignored."""
        words = normalized_words(text)
        if len(words) < self.n:
            self.too_short[name] += 1
            return
        for gram in ngrams(words, self.n):
            self.owners.setdefault(hash(gram), name)

    def add_file(self, path: str | os.PathLike, fields: Iterable[str] | None = None) -> None:
        """Index every example of an evaluation JSONL(.gz) file, named after the file."""
        name = Path(path).name.removesuffix(".gz").removesuffix(".jsonl")
        counts = ReadCounts()
        fields = list(fields) if fields else None
        for record in read_records(path, counts):
            texts = eval_texts(record, fields)
            if texts:
                self.examples[name] += 1
                for text in texts:
                    self.add_text(text, name)
        if not self.examples[name]:
            wanted = ", ".join(fields) if fields else "question/answer, prompt/canonical_solution or text"
            raise DataError(f"evaluation file {path} has no example with the fields {wanted}.")

    def overlaps(self, text: str) -> set[str]:
        """Names of the evaluation sets that share an n-gram with the text."""
        return {self.owners[key] for key in map(hash, ngrams(normalized_words(text), self.n)) if key in self.owners}


def decontaminate(
    documents: Iterable[dict], index: ContaminationIndex, counts: Counter | None = None, mode: str = "drop"
) -> Iterator[dict]:
    """Drop (mode "drop") or flag with meta["contaminated"] (mode "flag") documents overlapping the index."""
    if mode not in ("drop", "flag"):
        raise ConfigError(f"decontamination mode must be drop or flag, got {mode!r}.")
    counts = counts if counts is not None else Counter()
    for document in documents:
        sources = index.overlaps(document["text"])
        if not sources:
            counts["clean"] += 1
            yield document
            continue
        counts["contaminated"] += 1
        for source in sources:
            counts[f"contaminated_by_{source}"] += 1
        if mode == "flag":
            yield {**document, "meta": {**document.get("meta", {}), "contaminated": sorted(sources)}}
