"""GSM8K answer extraction: lm-eval's strict and flexible rules on hand-written outputs, and gold answers."""

import json

import pytest

from llmlab.evaluate import answers

from .shared import shared_data

GSM8K_TEST = shared_data("gsm8k", "test.jsonl")
GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize("output, strict, flexible", [
    ("48 + 24 = 72 clips.\n#### 72", "72", "72"),
    ("So the answer is 72.", answers.INVALID, "72."),  # flexible keeps the final "."; scoring deletes it
    ("The answer is **72**.", answers.INVALID, "72"),
    ("#### 5\nwait, no\n#### 6", "5", "6"),  # strict takes the first "####", flexible the last number
    ("She has $1,234.50 left.", answers.INVALID, "$1,234.50"),
    ("It got colder by 3 degrees: #### -3", "-3", "-3"),
    ("No idea.", answers.INVALID, answers.INVALID),
    ("Step 1 of 2: add 7", answers.INVALID, "7"),
])
def test_extraction_on_hand_written_outputs(output, strict, flexible):
    assert (answers.extract_strict(output), answers.extract_flexible(output)) == (strict, flexible)


@pytest.mark.parametrize("output, strict", [
    ("Leah had 32 chocolates and her sister 42, 32 + 42 = 74; after eating 35, 74 - 35 = 39. The answer is 39.", "39"),
    ("The answer is 1,234.50.", "1,234.50"),
    ("The answer is 72", "7"),  # the pattern's final "." takes any character: here the number's last digit
    ("The answer is 5. The answer is 6.", "5."),  # the first; the "." after it joins the number (scoring drops it)
    ("The answer is -3 degrees.", "-3"),
    ("The answer is $18.", answers.INVALID),  # "$" is not in the number's characters
    ("the answer is 18.", answers.INVALID),  # case matters
    ("#### 18", answers.INVALID),
])
def test_chain_of_thought_strict_extraction_on_hand_written_outputs(output, strict):
    assert answers.extract_cot_strict(output) == strict


def test_scoring_as_lm_eval_does():
    assert answers.score_gsm8k("So the answer is 72.", GOLD) == {
        "strict_answer": answers.INVALID, "flexible_answer": "72.", "strict-match": 0.0, "flexible-extract": 1.0}
    assert answers.score_gsm8k("#### 72\nThat is 72 clips, or 3 boxes", GOLD)["flexible-extract"] == 0.0
    assert answers.score_gsm8k("#### 72\nThat is 72 clips, or 3 boxes", GOLD)["strict-match"] == 1.0
    assert answers.answers_match("$1,000", "... #### 1,000") == 1.0  # commas and "$" are deleted on both sides
    assert answers.answers_match("18.00", "#### 18") == 0.0  # lm-eval's exact match compares strings


def test_numeric_normalisation():
    assert answers.normalize_number("$1,000.00") == "1000"
    assert answers.normalize_number("18.0") == "18"
    assert answers.normalize_number("-3.50") == "-3.5"
    assert answers.normalize_number("72.") == "72"
    assert answers.normalize_number("-0.0") == "0"
    assert answers.normalize_number(" 1e3 ") == "1000"
    assert answers.normalize_number("[invalid]") == "[invalid]"
    assert answers.answers_match("18.00", "#### 18", numeric=True) == 1.0
    assert answers.answers_match("$1,234.50", "#### 1234.5", numeric=True) == 1.0
    assert answers.answers_match(answers.INVALID, "#### 18", numeric=True) == 0.0


def test_gsm8k_gold():
    assert answers.gsm8k_gold(GOLD) == "72"


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="../shared/data/gsm8k/test.jsonl is absent")
@pytest.mark.parametrize("numeric", [False, True])
def test_gold_answers_as_outputs_score_100_percent(numeric):
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    assert len(rows) == 1319
    scores = [answers.score_gsm8k(row["answer"], row["answer"], numeric=numeric) for row in rows]
    assert all(s["strict-match"] == 1.0 and s["flexible-extract"] == 1.0 for s in scores)
