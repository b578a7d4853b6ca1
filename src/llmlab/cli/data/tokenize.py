"""`llmlab data tokenize IN... --tokenizer T --out DIR [--text-field F] [--shard-tokens N]`: documents into token
shards for pretraining."""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tokenize stage."""
    parser = subparsers.add_parser("tokenize", help="encode documents into memory-mapped token shards for pretrain",
                                   description="Encode JSONL documents with a tokenizer into a new shard directory "
                                               "(index.json, tokenizer.json, NAME.tokens/.docs) that a recipe's "
                                               "data.source can name.")
    parser.add_argument("sources", nargs="+", metavar="IN", help="input JSONL files (.jsonl or .jsonl.gz), in order")
    parser.add_argument("--tokenizer", required=True, metavar="T", help="tokenizer.json, or a directory holding one")
    parser.add_argument("--out", required=True, metavar="DIR", help="the new shard directory (must not exist)")
    parser.add_argument("--text-field", default="text", help="the field holding the text (default: text)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 28, metavar="N",
                        help="tokens per shard file before the next one starts (default: 2**28)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_tokenize)


def run_tokenize(arguments: argparse.Namespace) -> None:
    """Tokenize IN... into DIR and print a one-object JSON report."""
    from llmlab.data.jsonl import ReadCounts, check_readable, read_documents
    from llmlab.data.shards import TokenShards, tokenize_to_shards
    from llmlab.data.tokenizer import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(arguments.tokenizer)
    for source in arguments.sources:
        check_readable(source)
    counts = ReadCounts()
    texts = (document["text"] for source in arguments.sources
             for document in read_documents(source, counts, arguments.text_field))
    tokenize_to_shards(texts, tokenizer, arguments.out, arguments.shard_tokens, progress=not arguments.no_progress,
                       sources=list(arguments.sources))
    shards = TokenShards(arguments.out)
    report = {"stage": "tokenize", "out": arguments.out, "documents": shards.documents, "tokens": shards.tokens,
              "shards": len(shards.index["shards"]), "dtype": shards.dtype.name, "read": counts.as_dict(),
              "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(report))
