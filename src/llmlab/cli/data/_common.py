"""Helpers shared by the JSONL stage commands: the IN/OUT arguments and the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping


def add_jsonl_arguments(parser: argparse.ArgumentParser) -> None:
    """Add IN, OUT and --text-field to a stage's parser."""
    parser.add_argument("source", metavar="IN", help="input JSONL file (.jsonl, .jsonl.gz or .jsonl.zst), one {\"text\": ...} object per line")
    parser.add_argument("destination", metavar="OUT", help="output JSONL file, written atomically")
    parser.add_argument("--text-field", default="text", help="the field holding the text (default: text)")


def run_jsonl_stage(
    arguments: argparse.Namespace, stage: str, process: Callable[[Iterator[dict]], Iterable[dict]], counts: Counter
) -> None:
    """Stream IN through PROCESS into OUT and print a one-object JSON report of the counts."""
    from llmlab.data.jsonl import map_jsonl

    started = time.perf_counter()
    report = map_jsonl(arguments.source, arguments.destination, process, arguments.text_field)
    report = {"stage": stage, **report, "counts": dict(sorted(counts.items())),
              "seconds": round(time.perf_counter() - started, 3)}
    print(json.dumps(report))


def warn_truncated(counts: Mapping) -> None:
    """Say on stderr how many documents were cut to max_document_chars, if any (the report only counts them)."""
    if counts.get("truncated"):
        print(f"warning: {counts['truncated']} documents were longer than max_document_chars and were truncated "
              f"to it.", file=sys.stderr)
