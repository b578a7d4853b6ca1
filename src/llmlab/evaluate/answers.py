"""Answer extraction for GSM8K-style math outputs: lm-evaluation-harness's strict and flexible rules, both.

The rules are lm-eval's gsm8k task filters: "strict-match" takes the first "#### N" (gsm8k-cot's: the first "The
answer is N."); "flexible-extract" takes the last number-like run anywhere in the text. Each is scored as lm-eval
scores it (exact match after deleting commas, "$", everything up to "#### " and a final ".", ignoring case) and,
optionally, numerically: "18.00", "$18" and "18" are the same number.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .metrics import exact_match

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
COT_STRICT_PATTERN = re.compile(r"The answer is (\-?[0-9\.\,]+).")  # gsm8k-cot.yaml's, its "." any character
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
INVALID = "[invalid]"  # lm-eval's fallback when nothing matches
LM_EVAL_NORMALIZATION = {"regexes_to_ignore": (",", r"\$", "(?s).*#### ", r"\.$"), "ignore_case": True}


def _select(pattern: re.Pattern, text: str, index: int) -> str:
    """The `index`-th match of `pattern` (its first non-empty group), stripped, or INVALID."""
    matches = pattern.findall(text)
    if not matches:
        return INVALID
    match = matches[index]
    if isinstance(match, tuple):
        match = next(group for group in match if group)
    return match.strip()


def extract_strict(text: str) -> str:
    """lm-eval's strict-match: the number after the first "#### ", else "[invalid]"."""
    return _select(STRICT_PATTERN, text, 0)


def extract_cot_strict(text: str) -> str:
    """lm-eval's gsm8k-cot strict-match: the number of the first "The answer is N.", else "[invalid]"."""
    return _select(COT_STRICT_PATTERN, text, 0)


def extract_flexible(text: str) -> str:
    """lm-eval's flexible-extract: the last number-like run in the text, else "[invalid]"."""
    return _select(FLEXIBLE_PATTERN, text, -1)


def gsm8k_gold(answer: str) -> str:
    """The final answer of a GSM8K reference solution (the text after its last "#### ")."""
    return answer.rsplit("#### ", 1)[-1].strip()


def normalize_number(text: str) -> str:
    """A number in canonical form ("$1,000.00" → "1000", "-3.50" → "-3.5"); text that is no number, stripped."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return text.strip()
    if not value.is_finite():
        return text.strip()
    canonical = format(value.normalize(), "f")
    return "0" if canonical in ("-0", "0") else canonical


def answers_match(extracted: str, gold_answer: str, *, numeric: bool = False) -> float:
    """1.0 when an extracted answer equals the gold one: by lm-eval's exact match, or as numbers if `numeric`."""
    if extracted == INVALID:
        return 0.0
    if numeric:
        return float(normalize_number(extracted) == normalize_number(gsm8k_gold(gold_answer)))
    return exact_match(extracted, gold_answer, **LM_EVAL_NORMALIZATION)


def score_gsm8k(output: str, gold_answer: str, *, numeric: bool = False) -> dict:
    """Both rules on one output: the extracted answers and their scores ("strict-match", "flexible-extract")."""
    strict, flexible = extract_strict(output), extract_flexible(output)
    return {
        "strict_answer": strict,
        "flexible_answer": flexible,
        "strict-match": answers_match(strict, gold_answer, numeric=numeric),
        "flexible-extract": answers_match(flexible, gold_answer, numeric=numeric),
    }
