"""Synthetic instruction tasks for an offline demonstration: arithmetic, reversing, sorting, counting, copying, case
changes and lookups on the bundled corpus, each asked in several phrasings, with one exact answer, written as
Alpaca-format JSONL (instruction, input, output); and preference pairs of them against a model's own answers."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from pathlib import Path

from llmlab.errors import ConfigError

WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "silver", "candle",
         "forest", "window", "planet", "bridge", "honey", "marble", "violet", "anchor", "basket")
LOOKUP_CHARS = 200_000  # of the bundled corpus, for lookups
MAX_DRAWS = 1000  # draws of a task before its excluded prompts are taken to cover all it can ask

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


def generate_tasks(n: int, seed: int = 0, tasks: Sequence[str] | None = None,
                   exclude: Collection[tuple[str, str]] = ()) -> list[dict]:
    """n Alpaca records {instruction, input, output, task}, the tasks taken in turn, drawn from seed; a draw whose
    (instruction, input) is in exclude (another split's prompts) is drawn again."""
    names = list(tasks) if tasks else list(TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ConfigError(f"there is no synthetic task {unknown[0]!r} (known: {', '.join(TASKS)}).")
    rng = random.Random(seed)
    records = []
    for index in range(n):
        name = names[index % len(names)]
        for _ in range(MAX_DRAWS):
            instruction, given, output = TASKS[name](rng)
            if (instruction, given) not in exclude:
                break
        else:
            raise ConfigError(f"the synthetic task {name} has no prompt left that the excluded files do not hold.")
        records.append({"instruction": instruction, "input": given, "output": output, "task": name})
    return records


def read_prompts(paths: Sequence[str | os.PathLike]) -> set[tuple[str, str]]:
    """The (instruction, input) of every record of Alpaca JSONL files (to keep held-out prompts out of training)."""
    from llmlab.data.jsonl import read_records

    return {(record.get("instruction"), record.get("input") or "") for path in paths for record in read_records(path)}


def write_tasks(path: str | os.PathLike, n: int, seed: int = 0, tasks: Sequence[str] | None = None,
                overwrite: bool = False, exclude: Sequence[str | os.PathLike] = ()) -> Path:
    """Write n synthetic tasks as Alpaca-format JSONL to path, atomically, none with a prompt of the exclude files;
    an existing file needs overwrite."""
    from llmlab.data.jsonl import atomic_writer

    path = Path(path)
    if n < 1:
        raise ConfigError(f"the number of synthetic tasks must be at least 1, not {n}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another file or pass --overwrite.")
    records = generate_tasks(n, seed, tasks, read_prompts(exclude))
    with atomic_writer(path) as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")
    return path


# --- preference pairs -------------------------------------------------------------------------------------------------

REJECTED_FROM = ("model", "corrupted")  # where a preference pair's rejected answer came from


def corrupt(answer: str, rng: random.Random) -> str:
    """A wrong answer close to the gold one: a number moved by 1 to 3, two different words swapped (the last one
    dropped when all are the same), or a single word's case flipped — never the answer itself."""
    if answer.lstrip("-").isdigit():
        offset = rng.randint(1, 3)
        return str(int(answer) + (offset if int(answer) < 3 or rng.random() < 0.5 else -offset))
    words = answer.split(" ")
    pairs = [(i, j) for i in range(len(words)) for j in range(i + 1, len(words)) if words[i] != words[j]]
    if pairs:
        i, j = rng.choice(pairs)
        words[i], words[j] = words[j], words[i]
        return " ".join(words)
    if len(words) > 1:
        return " ".join(words[:-1])
    flipped = answer.swapcase()
    return flipped if flipped != answer else answer + answer[-1:] + "?"


def preference_pairs(model, records: Sequence[dict], max_new_tokens: int = 32, batch_size: int = 32,
                     seed: int = 0) -> list[dict]:
    """Preference records of synthetic tasks: prompt the Alpaca prompt as text, chosen the gold output, rejected the
    model's own greedy answer where it is wrong (rejected_from "model"), else a corrupted gold answer ("corrupted")."""
    from llmlab.adapt.templates import Encoder, load_template
    from llmlab.infer.chat import require_tokenizer
    from llmlab.infer.config import GenerationConfig
    from llmlab.infer.generate import generate

    tokenizer, config = require_tokenizer(model, "the model"), model.config
    encoder = Encoder(tokenizer, load_template("alpaca", tokenizer, config.eos_token_id), config.eos_token_id,
                      config.bos_token_id)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    greedy = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)
    prompts = [{"instruction": record["instruction"], "input": record["input"]} for record in records]
    answers = []
    for start in range(0, len(prompts), batch_size):
        ids = [encoder.encode_prompt(prompt) for prompt in prompts[start:start + batch_size]]
        answers += [text.strip() for text in generate(model.eval(), ids, greedy, tokenizer=tokenizer).text]
    rng, pairs = random.Random(seed), []
    for record, prompt, answer in zip(records, prompts, answers):
        wrong = bool(answer) and answer != record["output"]
        pairs.append({"prompt": encoder.template.render(prompt), "chosen": record["output"],
                      "rejected": answer if wrong else corrupt(record["output"], rng),
                      "rejected_from": REJECTED_FROM[0] if wrong else REJECTED_FROM[1], "task": record["task"]})
    return pairs


def write_preferences(path: str | os.PathLike, model_path: str | os.PathLike, n: int, seed: int = 0,
                      tasks: Sequence[str] | None = None, max_new_tokens: int = 32, overwrite: bool = False,
                      device: str = "cpu", exclude: Sequence[str | os.PathLike] = ()) -> tuple[Path, dict[str, int]]:
    """Write n preference pairs of synthetic tasks (see preference_pairs, none with a prompt of the exclude files)
    built from the model in model_path as JSONL, atomically; return the path and how many rejected answers came from
    the model and how many were corrupted."""
    import llmlab
    from llmlab.data.jsonl import atomic_writer

    path = Path(path)
    if n < 1:
        raise ConfigError(f"the number of preference pairs must be at least 1, not {n}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another file or pass --overwrite.")
    records = generate_tasks(n, seed, tasks, read_prompts(exclude))
    pairs = preference_pairs(llmlab.load(model_path, device=device), records, max_new_tokens, seed=seed)
    with atomic_writer(path) as stream:
        for pair in pairs:
            stream.write(json.dumps(pair) + "\n")
    return path, {source: sum(pair["rejected_from"] == source for pair in pairs) for source in REJECTED_FROM}
