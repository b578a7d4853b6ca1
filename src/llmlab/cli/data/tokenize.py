"""`llmlab data tokenize IN... --tokenizer T --out DIR [--format F] [--text-field F] [--shard-tokens N]`:
documents into token shards for pretraining."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from llmlab.cli.data._common import warn_truncated


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tokenize stage."""
    parser = subparsers.add_parser("tokenize", help="encode documents into memory-mapped token shards for pretrain",
                                   description="Encode documents with a tokenizer into a new shard directory "
                                               "(index.json, tokenizer.json, NAME.tokens/.docs) that a recipe's "
                                               "data.source can name.")
    parser.add_argument("sources", nargs="+", metavar="IN",
                        help="input files, directories or globs (text, JSONL, Parquet; .gz/.zst), read in order")
    parser.add_argument("--format", default="auto", help="auto (by suffix), text, jsonl, parquet, hf or bundled")
    parser.add_argument("--tokenizer", required=True, metavar="T", help="tokenizer.json, or a directory holding one")
    parser.add_argument("--out", required=True, metavar="DIR", help="the new shard directory (must not exist)")
    parser.add_argument("--text-field", default="text", help="the field holding the text (default: text)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 28, metavar="N",
                        help="tokens per shard file before the next one starts (default: 2**28)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_tokenize)


def run_tokenize(arguments: argparse.Namespace) -> None:
    """Tokenize IN... into DIR and print a one-object JSON report."""
    from llmlab.data.shards import TokenShards, tokenize_to_shards
    from llmlab.data.sources import SourceConfig, read_unit, source_units
    from llmlab.data.tokenizer import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(arguments.tokenizer)
    configs = [SourceConfig(path, format=arguments.format, text_field=arguments.text_field)
               for path in arguments.sources]
    units = [unit for config in configs for unit in source_units(config)]  # a bad input fails before any write
    counts = Counter()
    texts = (document["text"] for unit in units for document in read_unit(unit, counts))
    tokenize_to_shards(texts, tokenizer, arguments.out, arguments.shard_tokens, progress=not arguments.no_progress,
                       sources=list(arguments.sources))
    shards = TokenShards(arguments.out)
    report = {"stage": "tokenize", "out": arguments.out, "documents": shards.documents, "tokens": shards.tokens,
              "shards": len(shards.index["shards"]), "dtype": shards.dtype.name, "counts": dict(sorted(counts.items())),
              "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(report))
    warn_truncated(counts)
