"""`llmlab data train-tokenizer IN... --out DIR --kind byte_bpe|bpe|unigram --vocab-size N [--objective NAME ...]`:
train a tokenizer on documents and write DIR/tokenizer.json."""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from llmlab.cli.data._common import warn_truncated


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train-tokenizer stage."""
    from llmlab.data.tokenizer import KINDS, OBJECTIVES

    parser = subparsers.add_parser("train-tokenizer", help="train a byte-level BPE, BPE or Unigram tokenizer",
                                   description="Train a tokenizer on the documents of IN... and write DIR/tokenizer.json "
                                               "(loadable by transformers' PreTrainedTokenizerFast).")
    parser.add_argument("sources", nargs="+", metavar="IN",
                        help="input files, directories or globs: JSONL, text, Parquet (optionally .gz/.zst)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write tokenizer.json into")
    parser.add_argument("--kind", choices=KINDS, default="byte_bpe",
                        help="byte_bpe: GPT-2's byte-level BPE; bpe, unigram: SentencePiece-style with byte fallback")
    parser.add_argument("--vocab-size", type=int, required=True, metavar="N", help="ids in the vocabulary")
    parser.add_argument("--objective", action="append", default=[], choices=OBJECTIVES, metavar="NAME",
                        help=f"add the special tokens a pretraining objective needs: {', '.join(OBJECTIVES)}; repeatable")
    parser.add_argument("--sentinels", type=int, default=100, metavar="N",
                        help="sentinel tokens for span_corruption and ul2 (default: 100)")
    parser.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                        help="another special token; repeatable")
    parser.add_argument("--min-frequency", type=int, default=2, metavar="N",
                        help="BPE kinds: least count of a merged pair (default: 2)")
    parser.add_argument("--no-split-digits", action="store_true",
                        help="bpe, unigram: let digits merge (default: one digit per token)")
    parser.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text (default: text)")
    parser.add_argument("--max-documents", type=int, metavar="N", help="train on the first N documents only")
    parser.add_argument("--overwrite", action="store_true", help="replace a tokenizer.json already in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train_tokenizer)


def run_train_tokenizer(arguments: argparse.Namespace) -> None:
    """Train the tokenizer, write DIR/tokenizer.json atomically and print a one-object JSON report."""
    from tqdm.auto import tqdm

    from llmlab.data.sources import SourceConfig, read_source
    from llmlab.data.tokenizer import TOKENIZER_FILE, objective_special_tokens, save_tokenizer, train_tokenizer
    from llmlab.errors import ConfigError

    if arguments.max_documents is not None and arguments.max_documents < 1:
        raise ConfigError(f"--max-documents {arguments.max_documents} must be at least 1.")
    existing = Path(arguments.out) / TOKENIZER_FILE
    if existing.exists() and not arguments.overwrite:
        raise ConfigError(f"{existing} already exists; choose another --out or replace it with --overwrite.")
    started = time.perf_counter()
    configs = [SourceConfig(path=source, text_field=arguments.text_field) for source in arguments.sources]
    special_tokens = [token for objective in arguments.objective
                      for token in objective_special_tokens(objective, arguments.sentinels)]
    counts = Counter()
    documents = (document["text"] for config in configs for document in read_source(config, counts))

    def texts(bar: tqdm) -> Iterator[str]:
        for text in itertools.islice(documents, arguments.max_documents):
            counts["training_documents"] += 1
            bar.update()
            yield text

    with tqdm(desc="training on", unit="doc", disable=arguments.no_progress) as bar:
        tokenizer = train_tokenizer(texts(bar), arguments.vocab_size, arguments.kind,
                                    special_tokens=[*special_tokens, *arguments.special_token],
                                    min_frequency=arguments.min_frequency,
                                    split_digits=False if arguments.no_split_digits else None,
                                    progress=not arguments.no_progress)
    path = save_tokenizer(tokenizer, arguments.out)
    report = {"stage": "train-tokenizer", "out": path, "kind": arguments.kind, "vocab_size": tokenizer.get_vocab_size(),
              "special_tokens": len(tokenizer.get_added_tokens_decoder()),
              "documents": counts["training_documents"], "read": dict(sorted(counts.items())),
              "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(report))
    warn_truncated(counts)
