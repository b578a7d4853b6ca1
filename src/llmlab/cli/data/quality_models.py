"""`llmlab data train-classifier` and `llmlab data train-ngram`: the models the filter stage's --classifier and --ngram-model use."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the train-classifier and train-ngram stages."""
    classifier = subparsers.add_parser("train-classifier", help="train a hashed n-gram logistic-regression quality classifier")
    classifier.add_argument("--good", required=True, metavar="FILE", help="JSONL of high-quality documents")
    classifier.add_argument("--bad", required=True, metavar="FILE", help="JSONL of low-quality documents")
    classifier.add_argument("destination", metavar="OUT", help="where to save the classifier (.npz)")
    classifier.add_argument("--text-field", default="text", help="the field holding the text (default: text)")
    classifier.set_defaults(handler=run_train_classifier)
    ngram = subparsers.add_parser("train-ngram", help="train a word n-gram model for perplexity filtering")
    ngram.add_argument("source", metavar="IN", help="JSONL of reference documents")
    ngram.add_argument("destination", metavar="OUT", help="where to save the model (.json)")
    ngram.add_argument("--order", type=int, default=3, help="n-gram order (default: 3)")
    ngram.add_argument("--k", type=float, default=0.1, help="add-k smoothing constant (default: 0.1)")
    ngram.add_argument("--text-field", default="text", help="the field holding the text (default: text)")
    ngram.set_defaults(handler=run_train_ngram)


def _texts(path: str, text_field: str) -> list[str]:
    """The texts of a JSONL file (bad lines skipped)."""
    from llmlab.data.jsonl import read_documents

    return [document["text"] for document in read_documents(path, text_field=text_field)]


def run_train_classifier(arguments: argparse.Namespace) -> None:
    """Train the classifier and save it."""
    from llmlab.data.filters import QualityClassifier

    good, bad = _texts(arguments.good, arguments.text_field), _texts(arguments.bad, arguments.text_field)
    QualityClassifier().fit(good, bad).save(arguments.destination)
    print(f"trained on {len(good)} good and {len(bad)} bad documents; wrote {arguments.destination}")


def run_train_ngram(arguments: argparse.Namespace) -> None:
    """Train the n-gram model and save it."""
    from llmlab.data.filters import NGramModel

    texts = _texts(arguments.source, arguments.text_field)
    model = NGramModel(order=arguments.order, k=arguments.k).fit(texts)
    model.save(arguments.destination)
    print(f"trained a {arguments.order}-gram model on {len(texts)} documents ({len(model.vocabulary)} words); "
          f"wrote {arguments.destination}")
