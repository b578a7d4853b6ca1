"""`llmlab data langid IN OUT`: tag each document with its language (py3langid) and optionally keep only some."""

from __future__ import annotations

import argparse
from collections import Counter

from llmlab.cli.data._common import add_jsonl_arguments, run_jsonl_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the langid stage."""
    parser = subparsers.add_parser("langid", help="add language and language_score fields; optionally keep some languages")
    add_jsonl_arguments(parser)
    parser.add_argument("--keep", metavar="SPEC",
                        help="keep only these languages with per-language minimum scores, e.g. en or en:0.8,fr (default 0.65)")
    parser.set_defaults(handler=run_langid)


def run_langid(arguments: argparse.Namespace) -> None:
    """Tag (and filter) IN into OUT and print per-language counts."""
    from llmlab.data.filters import apply_filters, identify_language, LanguageFilter, parse_language_thresholds

    counts: Counter = Counter()
    if arguments.keep:
        language_filter = LanguageFilter(parse_language_thresholds(arguments.keep))

        def process(documents):
            return apply_filters(documents, [language_filter], counts)
    else:
        def process(documents):
            for document in documents:
                language, score = identify_language(document["text"])
                counts[f"language_{language}"] += 1
                yield {**document, "meta": {**document["meta"], "language": language, "language_score": round(score, 4)}}

    run_jsonl_stage(arguments, "langid", process, counts)
