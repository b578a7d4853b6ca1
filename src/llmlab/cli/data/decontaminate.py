"""`llmlab data decontaminate IN OUT --eval FILE...`: drop or flag documents sharing 13-grams with evaluation sets."""

from __future__ import annotations

import argparse
from collections import Counter

from llmlab.cli.data._common import add_jsonl_arguments, run_jsonl_stage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the decontaminate stage."""
    parser = subparsers.add_parser("decontaminate", help="drop or flag documents overlapping evaluation sets")
    add_jsonl_arguments(parser)
    parser.add_argument("--eval", nargs="+", required=True, metavar="FILE",
                        help="evaluation JSONL(.gz) files (GSM8K question/answer, HumanEval prompt/canonical_solution, or text)")
    parser.add_argument("--eval-fields", metavar="FIELDS", help="comma-separated fields of the evaluation examples to use")
    parser.add_argument("--ngram", type=int, default=13, help="overlap length in words (default: 13, as GPT-3)")
    parser.add_argument("--mode", choices=("drop", "flag"), default="drop",
                        help="drop contaminated documents, or keep them with a contaminated field (default: drop)")
    parser.set_defaults(handler=run_decontaminate)


def run_decontaminate(arguments: argparse.Namespace) -> None:
    """Decontaminate IN into OUT and print the counts."""
    from llmlab.data.decontaminate import ContaminationIndex, decontaminate
    from llmlab.data.jsonl import check_readable

    check_readable(arguments.source)
    index = ContaminationIndex(n=arguments.ngram)
    fields = arguments.eval_fields.split(",") if arguments.eval_fields else None
    for path in arguments.eval:
        index.add_file(path, fields)
    counts: Counter = Counter({f"eval_examples_{name}": count for name, count in index.examples.items()})
    run_jsonl_stage(arguments, "decontaminate",
                    lambda documents: decontaminate(documents, index, counts, arguments.mode), counts)
