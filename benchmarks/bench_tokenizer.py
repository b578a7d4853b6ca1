"""Tokenizers: compression (characters per token on held-out text) and training time of llmlab's three kinds
against sentencepiece's BPE and Unigram trained with the same settings, on one text file.

The first --train-chars characters train every tokenizer (vocabulary --vocab-size, UL2's special tokens for
llmlab; sentencepiece gets the same total by a smaller piece vocabulary), the rest is held out. sentencepiece:
byte fallback, split digits, character coverage 0.9995, identity normalisation, no dummy prefix, one thread; it
encodes line by line (one token counted per newline), so its figure is approximate.

    .venv/bin/python benchmarks/bench_tokenizer.py --text ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import io
import time

from llmlab.data.tokenizer import objective_special_tokens, train_tokenizer


def main() -> None:
    """Train every tokenizer and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="a UTF-8 text file")
    parser.add_argument("--train-chars", type=int, default=900_000)
    parser.add_argument("--vocab-size", type=int, default=4096)
    arguments = parser.parse_args()
    text = open(arguments.text, encoding="utf-8").read()
    train, held_out = text[: arguments.train_chars], text[arguments.train_chars:]
    special = objective_special_tokens("ul2")
    rows = []
    for kind in ("byte_bpe", "bpe", "unigram"):
        started = time.perf_counter()
        tokenizer = train_tokenizer([train], arguments.vocab_size, kind, special_tokens=special)
        seconds = time.perf_counter() - started
        ids = tokenizer.encode(held_out).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == held_out
        rows.append((f"llmlab {kind}", len(held_out) / len(ids), seconds))
    try:
        import sentencepiece
    except ImportError:
        sentencepiece = None
    for model_type in ("bpe", "unigram") if sentencepiece else ():
        started, model = time.perf_counter(), io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(train.split("\n")), model_writer=model, model_type=model_type,
            vocab_size=arguments.vocab_size - len(special) - 3, byte_fallback=True, split_digits=True,
            character_coverage=0.9995, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, num_threads=1, minloglevel=2)
        seconds = time.perf_counter() - started
        processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
        lines = held_out.split("\n")
        tokens = sum(len(processor.encode(line)) for line in lines) + len(lines) - 1
        rows.append((f"sentencepiece {model_type}", len(held_out) / tokens, seconds))
    print("| tokenizer | characters/token (held out) | training seconds |\n|---|---:|---:|")
    for name, ratio, seconds in rows:
        print(f"| {name} | {ratio:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
