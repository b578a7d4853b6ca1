"""Synthetic instruction tasks for an offline demonstration: arithmetic, reversing, sorting, counting, copying, case
changes and lookups on the bundled corpus, each asked in several phrasings, with one exact answer, written as
Alpaca-format JSONL (instruction, input, output)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from llmlab.errors import ConfigError

WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "silver", "candle",
         "forest", "window", "planet", "bridge", "honey", "marble", "violet", "anchor", "basket")
LOOKUP_CHARS = 200_000  # of the bundled corpus, for lookups

Task = Callable[[random.Random], tuple[str, str, str]]  # rng -> (instruction, input, output)


def _words(rng: random.Random, low: int = 3, high: int = 5) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def addition(rng: random.Random) -> tuple[str, str, str]:
    """a + b for a, b below 50."""
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    phrasing = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
                           "What do you get when you add {a} to {b}?"])
    return phrasing.format(a=a, b=b), "", str(a + b)


def multiplication(rng: random.Random) -> tuple[str, str, str]:
    """a × b for a, b from 2 to 12."""
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    phrasing = rng.choice(["What is {a} * {b}?", "Multiply {a} by {b}.", "Compute the product of {a} and {b}.",
                           "What is {a} times {b}?"])
    return phrasing.format(a=a, b=b), "", str(a * b)


def reverse_words(rng: random.Random) -> tuple[str, str, str]:
    """A list of words in reverse order."""
    words = _words(rng)
    phrasing = rng.choice(["Reverse the order of these words.", "Write these words backwards, last word first.",
                           "List the words in reverse order."])
    return phrasing, " ".join(words), " ".join(reversed(words))


def sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    """Numbers sorted ascending."""
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    phrasing = rng.choice(["Sort these numbers from smallest to largest.", "Put these numbers in ascending order.",
                           "Arrange the numbers in increasing order."])
    return phrasing, " ".join(map(str, numbers)), " ".join(map(str, sorted(numbers)))


def count_letter(rng: random.Random) -> tuple[str, str, str]:
    """How often a letter occurs in a word."""
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    phrasing = rng.choice(["How many times does the letter {l} appear in the word below?",
                           "Count the letter {l} in this word.", "How often does {l} occur in the word?"])
    return phrasing.format(l=letter), word, str(word.count(letter))


def count_words(rng: random.Random) -> tuple[str, str, str]:
    """The number of words in a list."""
    words = _words(rng, 2, 7)
    phrasing = rng.choice(["How many words are there?", "Count the words below.", "Give the number of words."])
    return phrasing, " ".join(words), str(len(words))


def copy(rng: random.Random) -> tuple[str, str, str]:
    """The input repeated exactly."""
    text = " ".join(_words(rng))
    phrasing = rng.choice(["Repeat the text exactly.", "Copy the input.", "Write the text below again."])
    return phrasing, text, text


def upper_case(rng: random.Random) -> tuple[str, str, str]:
    """The input in capitals."""
    text = " ".join(_words(rng, 1, 3))
    phrasing = rng.choice(["Write this in upper case.", "Convert the text to capital letters.", "Uppercase this."])
    return phrasing, text, text.upper()


def lower_case(rng: random.Random) -> tuple[str, str, str]:
    """The input in small letters."""
    text = " ".join(_words(rng, 1, 3)).upper()
    phrasing = rng.choice(["Write this in lower case.", "Convert the text to small letters.", "Lowercase this."])
    return phrasing, text, text.lower()


@lru_cache(maxsize=1)
def _corpus_entries() -> tuple[tuple[str, str], ...]:
    from llmlab.data.corpus import bundled_documents

    entries = []
    for document in bundled_documents(LOOKUP_CHARS):
        first = document["text"].split()[0].strip(".,:;")
        if document["meta"]["name"] and first.isalpha():
            entries.append((document["meta"]["name"], first))
    return tuple(entries)


def lookup(rng: random.Random) -> tuple[str, str, str]:
    """The first word of a bundled-corpus docstring, named by its object (recall of the pretraining data)."""
    name, first = rng.choice(_corpus_entries())
    phrasing = rng.choice(["What is the first word of the docstring of {n}?",
                           "Which word begins the documentation of {n}?", "Name the first word of {n}'s docstring."])
    return phrasing.format(n=name), "", first


TASKS: dict[str, Task] = {"addition": addition, "multiplication": multiplication, "reverse": reverse_words,
                          "sort": sort_numbers, "count_letter": count_letter, "count_words": count_words,
                          "copy": copy, "upper": upper_case, "lower": lower_case, "lookup": lookup}


def generate_tasks(n: int, seed: int = 0, tasks: Sequence[str] | None = None) -> list[dict]:
    """n Alpaca records {instruction, input, output, task}, the tasks taken in turn, drawn from seed."""
    names = list(tasks) if tasks else list(TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ConfigError(f"there is no synthetic task {unknown[0]!r} (known: {', '.join(TASKS)}).")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        name = names[index % len(names)]
        instruction, given, output = TASKS[name](rng)
        records.append({"instruction": instruction, "input": given, "output": output, "task": name})
    return records


def write_tasks(path: str | os.PathLike, n: int, seed: int = 0, tasks: Sequence[str] | None = None,
                overwrite: bool = False) -> Path:
    """Write n synthetic tasks as Alpaca-format JSONL to path, atomically; an existing file needs overwrite."""
    from llmlab.data.jsonl import atomic_writer

    path = Path(path)
    if n < 1:
        raise ConfigError(f"the number of synthetic tasks must be at least 1, not {n}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another file or pass --overwrite.")
    records = generate_tasks(n, seed, tasks)
    with atomic_writer(path) as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")
    return path
