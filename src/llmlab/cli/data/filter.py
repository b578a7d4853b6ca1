"""`llmlab data filter IN OUT`: quality filtering with heuristic rules, blocklists, language, classifier, perplexity."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter

from llmlab.cli.data._common import add_jsonl_arguments, run_jsonl_stage

# FineWeb's order of the heuristic rule sets (as llmlab.data.filters.HEURISTIC_RULE_SETS; kept here so --help stays fast)
RULE_SETS = ("gopher-repetition", "gopher-quality", "c4", "fineweb")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the filter stage."""
    parser = subparsers.add_parser("filter", help="drop low-quality documents (Gopher, C4, FineWeb rules and more)")
    add_jsonl_arguments(parser)
    parser.add_argument("--rules", default=",".join(RULE_SETS),
                        help=f"comma-separated heuristic rule sets from {', '.join(RULE_SETS)}, or none (default: all)")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="drop documents with any word or phrase of FILE (one per line); repeatable")
    parser.add_argument("--languages", metavar="SPEC", help="keep only these languages, e.g. en or en:0.8,fr (py3langid)")
    parser.add_argument("--language-rules", metavar="FILE",
                        help="YAML of per-language rule overrides, {language: {rule set: {field: value}}}")
    parser.add_argument("--classifier", metavar="FILE", help="a quality classifier from `llmlab data train-classifier`")
    parser.add_argument("--classifier-threshold", type=float, default=0.5, help="minimum quality score (default: 0.5)")
    parser.add_argument("--pareto", action="store_true",
                        help="GPT-3 sampling: keep a document when rng.pareto(9) > 1 - score, instead of the threshold")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Pareto sampling (default: 0)")
    parser.add_argument("--ngram-model", metavar="FILE", help="an n-gram model from `llmlab data train-ngram`")
    parser.add_argument("--reference-model", metavar="DIR", help="a decoder checkpoint (with tokenizer.json) to score perplexity with instead")
    parser.add_argument("--max-perplexity", type=float,
                        help="drop documents above this perplexity under --ngram-model or --reference-model")
    parser.add_argument("--rejected", metavar="FILE", help="also write the dropped documents here, with dropped_by")
    parser.set_defaults(handler=run_filter)


def run_filter(arguments: argparse.Namespace) -> None:
    """Filter IN into OUT and print the counts of kept and dropped-by-rule documents."""
    from llmlab.data.filters import apply_filters, build_filters
    from llmlab.data.jsonl import atomic_writer, check_readable, document_to_record

    check_readable(arguments.source)
    chain = build_filters(arguments)
    counts: Counter = Counter()
    with contextlib.ExitStack() as stack:
        rejected = stack.enter_context(atomic_writer(arguments.rejected)) if arguments.rejected else None

        def process(documents):
            for document in apply_filters(documents, chain, counts, keep_dropped=rejected is not None):
                if "dropped_by" in document["meta"]:
                    line = json.dumps(document_to_record(document, arguments.text_field), ensure_ascii=False)
                    rejected.write(line + "\n")
                else:
                    yield document

        run_jsonl_stage(arguments, "filter", process, counts)
