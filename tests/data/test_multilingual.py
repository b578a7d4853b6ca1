"""Language-aware quality rules: good German, French, Chinese, Japanese, Russian, Hindi and Arabic paragraphs
(tests/data/multilingual.jsonl) pass every rule set once their language is known, junk in those languages is still
dropped, per-language overrides apply, and English is judged as before."""

import json
from collections import Counter
from pathlib import Path

import pytest

from llmlab.data.filters import (HEURISTIC_RULE_SETS, LanguageFilter, apply_filters, check_language_rules,
                                 heuristic_filters, rule_set)
from llmlab.data.languages import (STOP_WORDS, count_multilingual_sentences, multilingual_words,
                                   normalise_language)
from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import recipe_from_dict
from llmlab.errors import ConfigError

CORPUS = Path(__file__).with_name("multilingual.jsonl")
GOOD = {record["language"]: record["text"] for record in map(json.loads, CORPUS.read_text(encoding="utf-8").splitlines())}
LANGUAGES = sorted(GOOD)
# the first sentence of each document: repeated, it is junk
FIRST_SENTENCE = {
    "de": "Die Stadtbibliothek hat am Montag ihren umgebauten Lesesaal wiedereröffnet.",
    "fr": "Le marché couvert du centre-ville a rouvert ses portes samedi après plusieurs mois de travaux.",
    "zh": "上周末，市图书馆经过一年多的改造后重新对外开放。",
    "ja": "先週の土曜日、駅前の市立図書館が約一年半の改装工事を終えて再びオープンしました。",
    "ru": "В субботу после полутора лет ремонта вновь открылась городская библиотека.",
    "hi": "शहर का पुराना पुस्तकालय डेढ़ साल की मरम्मत के बाद शनिवार को फिर से खुल गया।",
    "ar": "أعادت مكتبة المدينة فتح أبوابها يوم السبت بعد عام ونصف من أعمال التجديد.",
}


def verdicts(text: str, language: str | None) -> dict[str, str | None]:
    """The rule that each rule set drops TEXT by (None: kept), judging it as LANGUAGE."""
    return {name: rule_set(name, language)(text).dropped_by for name in HEURISTIC_RULE_SETS}


def test_without_a_language_the_english_rules_drop_the_good_documents():
    # the reproduction: English assumptions throw away every Chinese document and the German defaults
    assert verdicts(GOOD["zh"], None) == {"gopher-repetition": None, "gopher-quality": "gopher_min_words",
                                          "c4": "c4_min_sentences", "fineweb": "fineweb_line_punctuation"}
    assert verdicts(GOOD["de"], None)["gopher-quality"] == "gopher_stop_words"
    assert verdicts(GOOD["hi"], None)["fineweb"] == "fineweb_line_punctuation"


@pytest.mark.parametrize("language", LANGUAGES)
def test_good_documents_pass_every_rule_set_in_their_language(language):
    assert verdicts(GOOD[language], language) == dict.fromkeys(HEURISTIC_RULE_SETS)


@pytest.mark.parametrize("language", LANGUAGES)
def test_repetition_is_still_dropped(language):
    text = "\n".join([FIRST_SENTENCE[language]] * 10)
    found = verdicts(text, language)
    assert found["gopher-repetition"] == "gopher_duplicate_lines"
    assert found["fineweb"] == "fineweb_duplicate_line_chars"


@pytest.mark.parametrize("language", LANGUAGES)
def test_lists_without_sentences_are_still_dropped(language):
    # the document's words, four to a line, without punctuation: a menu or a tag cloud
    words = multilingual_words(GOOD[language])
    text = "\n".join(" ".join(words[start:start + 4]) for start in range(0, len(words), 4))
    found = verdicts(text, language)
    assert found["c4"] == "c4_min_sentences"
    assert found["fineweb"] == "fineweb_line_punctuation"


@pytest.mark.parametrize("language", LANGUAGES)
def test_text_without_stop_words_is_still_dropped(language):
    stop_words = set(STOP_WORDS[language])
    keywords = [word for word in multilingual_words(GOOD[language]) if word.lower() not in stop_words]
    assert verdicts(" ".join(keywords) + ".", language)["gopher-quality"] == "gopher_stop_words"


def test_boilerplate_is_still_dropped():
    cookie_banner = ("Diese Website verwendet Cookies. Mehr erfahren in der Datenschutzerklärung. OK.\n"
                     "Startseite\nÜber uns\nKontakt\nImpressum\nDatenschutz\nNewsletter\nAGB\nSitemap")
    assert verdicts(cookie_banner, "de")["fineweb"] == "fineweb_line_punctuation"
    chinese_navigation = "首页\n新闻中心\n产品展示\n联系我们\n关于我们\n在线留言\n网站地图\n版权所有"
    assert verdicts(chinese_navigation, "zh")["fineweb"] == "fineweb_line_punctuation"
    assert verdicts(chinese_navigation, "zh")["gopher-quality"] == "gopher_min_words"


def test_a_language_without_stop_words_skips_that_rule_only():
    swahili = " ".join(["Watoto", "walicheza", "mpira", "uwanjani", "jana", "jioni."] * 10)
    assert rule_set("gopher-quality", "sw")(swahili).dropped_by is None
    assert rule_set("gopher-quality", None)(swahili).dropped_by == "gopher_stop_words"
    assert rule_set("gopher-quality", "sw")("Watoto walicheza.").dropped_by == "gopher_min_words"


def test_words_by_script():
    # spaced scripts: tokens without their punctuation; unspaced scripts: a word per letter, marks kept with it
    assert multilingual_words("„Guten Tag“, sagte er – wirklich!") == ["Guten", "Tag", "sagte", "er", "wirklich"]
    assert multilingual_words("我用Python写了3个程序，很好。") == ["我", "用", "Python", "写", "了", "3", "个", "程", "序", "很", "好"]
    assert multilingual_words("東京へ行きました！") == ["東", "京", "へ", "行", "き", "ま", "し", "た"]
    assert multilingual_words("ไม่มี") == ["ไ", "ม่", "มี"]  # a letter with its tone mark or vowel sign
    assert multilingual_words("क्या यह काम करता है?") == ["क्या", "यह", "काम", "करता", "है"]
    assert multilingual_words("هل هذا اختبار؟ نعم، إنه كذلك.") == ["هل", "هذا", "اختبار", "نعم", "إنه", "كذلك"]


def test_sentence_ends_of_every_script():
    # 。 ？ ！” 。 (CJK, no space needed), "End." ।  ?  ؟  ։  ። : 10; "3.14" and "e.g" are no sentence ends
    text = "我很好。你呢？“好！”她说。 End. यह है। क्या? هل؟ Բարեւ։ ሰላም። 3.14 e.g"
    assert count_multilingual_sentences(text) == 10


def test_language_tags_are_normalised():
    assert [normalise_language(tag) for tag in ("zh-Hans", "pt_BR", "DE", "", None)] == ["zh", "pt", "de", None, None]
    assert rule_set("gopher-quality", "zh-Hans")(GOOD["zh"]).dropped_by is None


@pytest.mark.parametrize("language", [None, "en", "EN", "en-GB"])
def test_english_and_unknown_languages_get_the_published_rules(language):
    for name, cls in HEURISTIC_RULE_SETS.items():
        assert rule_set(name, language) == cls()


def test_apply_filters_takes_the_language_from_meta_or_an_earlier_language_filter():
    documents = [{"text": text, "meta": {"language": language}} for language, text in GOOD.items()]
    counts = Counter()
    assert len(list(apply_filters(documents, heuristic_filters(), counts))) == len(GOOD)
    untagged = [{"text": text, "meta": {}} for text in GOOD.values()]
    counts = Counter()
    chain = [LanguageFilter(dict.fromkeys(LANGUAGES, 0.65))] + heuristic_filters()
    assert [document["meta"]["language"] for document in apply_filters(untagged, chain, counts)] == list(GOOD)
    counts = Counter()
    list(apply_filters(untagged, heuristic_filters(), counts))
    assert counts["kept"] < len(GOOD)  # without a language, the English rules


def test_language_rules_override_one_language():
    rules = check_language_rules({"de": {"gopher-quality": {"min_words": 500, "stop_words": ["der"]}}})
    assert rules == {"de": {"gopher-quality": {"min_words": 500, "stop_words": ("der",)}}}
    chain = heuristic_filters(["gopher-quality"], rules)
    documents = [{"text": GOOD[language], "meta": {"language": language}} for language in ("de", "fr")]
    counts = Counter()
    list(apply_filters(documents, chain, counts))
    assert counts == {"gopher_min_words": 1, "kept": 1}


@pytest.mark.parametrize("rules, message", [
    ({"de": {"gopher": {}}}, "unknown rule set 'gopher'"),
    ({"de": {"c4": {"min_sentence": 2}}}, "has no field 'min_sentence'"),
    ({"de": {"c4": {"min_sentences": "many"}}}, "min_sentences must be int"),
    ({"de": ["c4"]}, "must be a mapping"),
])
def test_bad_language_rules_are_config_errors(rules, message):
    with pytest.raises(ConfigError, match=message):
        check_language_rules(rules)


def test_pipeline_with_langid_before_filter_keeps_every_language(tmp_path):
    untagged = tmp_path / "multilingual.jsonl"
    untagged.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in GOOD.values()),
                        encoding="utf-8")
    rules = tmp_path / "rules.yaml"
    rules.write_text("fr:\n  gopher-quality:\n    min_words: 1000\n", encoding="utf-8")

    def run(stages, name):
        recipe = recipe_from_dict({"sources": [{"path": str(untagged)}], "stages": stages, "output": str(tmp_path / name)})
        return run_pipeline(recipe, progress=False)["documents"]

    assert run(["langid", "filter"], "with-langid") == len(GOOD)
    assert run(["langid", {"filter": {"language_rules": str(rules)}}], "with-rules") == len(GOOD) - 1
    assert run(["filter"], "without-langid") < len(GOOD)
