"""`llmlab data pii IN OUT`: replace e-mails, phones, IPs, card numbers, IDs and URL credentials by placeholders."""

from __future__ import annotations

import argparse
from collections import Counter

from llmlab.cli.data._common import add_jsonl_arguments, run_jsonl_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the pii stage."""
    parser = subparsers.add_parser("pii", help="replace personal information by typed placeholders (<EMAIL>, ...)")
    add_jsonl_arguments(parser)
    parser.set_defaults(handler=run_pii)


def run_pii(arguments: argparse.Namespace) -> None:
    """Scrub IN into OUT and print the replacement counts per kind."""
    from llmlab.data.pii import scrub_documents

    counts: Counter = Counter()
    run_jsonl_stage(arguments, "pii", lambda documents: scrub_documents(documents, counts), counts)
