"""`llmlab data dedup IN OUT [--near] [--shingle N] [--bands B --rows R] [--index DIR]`: remove duplicate documents."""

from __future__ import annotations

import argparse

from llmlab.cli.data._common import add_jsonl_arguments, run_jsonl_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the dedup stage."""
    parser = subparsers.add_parser("dedup", help="remove exact (and with --near, MinHash near-) duplicates; the first is kept")
    add_jsonl_arguments(parser)
    parser.add_argument("--near", action="store_true", help="also remove near-duplicate documents (MinHash-LSH)")
    parser.add_argument("--shingle", type=int, default=5, help="words per MinHash shingle (default: 5)")
    parser.add_argument("--bands", type=int, default=14, help="LSH bands (default: 14)")
    parser.add_argument("--rows", type=int, default=8, help="MinHash rows per LSH band (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MinHash permutations (default: 0)")
    parser.add_argument("--index", metavar="DIR", help="also remove what the index in DIR has seen; then save the updated index there")
    parser.add_argument("--units", choices=("line", "sentence"), help="also remove lines or sentences seen earlier in the corpus")
    parser.add_argument("--repeats", action="store_true", help="remove repeated lines and repeated word n-grams inside each document")
    parser.set_defaults(handler=run_dedup)


def run_dedup(arguments: argparse.Namespace) -> None:
    """De-duplicate IN into OUT, print the counts, and save the index if one was named."""
    from llmlab.data.dedup import Deduplicator, MinHashConfig, open_index

    minhash = MinHashConfig(arguments.shingle, arguments.bands, arguments.rows, arguments.seed)
    index = open_index(arguments.index, minhash)
    deduplicator = Deduplicator(arguments.near, unit=arguments.units, repeats=arguments.repeats, index=index)
    run_jsonl_stage(arguments, "dedup", deduplicator, deduplicator.stats)
    if arguments.index is not None:
        index.save(arguments.index)
