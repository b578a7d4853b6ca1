"""Quality filters: each Gopher, C4 and FineWeb rule on crafted documents on both sides of its
published threshold (the expected fractions are worked out by hand in the comments), plus the
blocklist, language, classifier and perplexity filters."""

import math
from collections import Counter
from string import ascii_lowercase

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.data.filters import (
    Blocklist,
    C4Rules,
    ClassifierFilter,
    FineWebRules,
    GopherQuality,
    GopherRepetition,
    LanguageFilter,
    NGramModel,
    PerplexityFilter,
    QualityClassifier,
    WordNgrams,
    apply_filters,
)


def distinct_words(count: int, length: int, first: str = "") -> list[str]:
    """COUNT different lower-case words of exactly LENGTH letters (base-26 numerals), optionally with a fixed first letter."""
    words = []
    for index in range(count):
        letters = ""
        for _ in range(length - len(first)):
            index, digit = divmod(index, 26)
            letters = ascii_lowercase[digit] + letters
        words.append(first + letters)
    return words


# ------------------------------------------------------------------ Gopher quality (Rae et al. 2021, A.1.1)


def gopher_quality(text: str) -> str | None:
    return GopherQuality()(text).dropped_by


def test_gopher_min_words():
    # 2 stop words + 47 / 48 five-letter words: 49 words < 50 drops, 50 passes
    assert gopher_quality(" ".join(["the", "and"] + ["house"] * 47)) == "gopher_min_words"
    assert gopher_quality(" ".join(["the", "and"] + ["house"] * 48)) is None


def test_gopher_max_words():
    assert gopher_quality(" ".join(["the", "and"] + ["house"] * 99_999)) == "gopher_max_words"
    assert gopher_quality(" ".join(["the", "and"] + ["house"] * 99_998)) is None


def test_gopher_mean_word_length():
    # (3 + 3 + 48 * 2) / 50 = 2.04 < 3; (3 + 3 + 48 * 3) / 50 = 3.0 passes
    assert gopher_quality(" ".join(["the", "and"] + ["ab"] * 48)) == "gopher_min_mean_word_length"
    assert gopher_quality(" ".join(["the", "and"] + ["cat"] * 48)) is None
    # (6 + 48 * 11) / 50 = 10.68 > 10; (6 + 2 * 7 + 46 * 10) / 50 = 9.6 passes
    assert gopher_quality(" ".join(["the", "and"] + ["a" * 11] * 48)) == "gopher_max_mean_word_length"
    assert gopher_quality(" ".join(["the", "and"] + ["b" * 7] * 2 + ["a" * 10] * 46)) is None


@pytest.mark.parametrize("symbol, rule", [("#", "gopher_hash_ratio"), ("...", "gopher_ellipsis_ratio"), ("…", "gopher_ellipsis_ratio")])
def test_gopher_symbol_to_word_ratio(symbol, rule):
    words = ["the", "and"] + ["house"] * 48
    # 6 symbols / 50 words = 0.12 > 0.1 drops; 5 / 50 = 0.1 passes
    assert gopher_quality(" ".join(words[:10] + [symbol] * 6 + words[10:])) == rule
    assert gopher_quality(" ".join(words[:10] + [symbol] * 5 + words[10:])) is None


def test_gopher_bullet_lines():
    line = "• the house and garden were white"
    plain = "the house and garden were white"
    # 10 of 10 lines start with a bullet (100% > 90%) drops; 9 of 10 (90%) passes
    assert gopher_quality("\n".join([line] * 10)) == "gopher_bullet_lines"
    assert gopher_quality("\n".join([line] * 9 + [plain])) is None


def test_gopher_ellipsis_lines():
    ending = "the house and garden were white ..."
    plain = "the house and garden were white today"
    # 4 of 10 lines end with an ellipsis (40% > 30%) drops; 3 of 10 passes
    assert gopher_quality("\n".join([ending] * 4 + [plain] * 6)) == "gopher_ellipsis_lines"
    assert gopher_quality("\n".join([ending] * 3 + [plain] * 7)) is None


def test_gopher_alphabetic_words():
    words = ["the", "and"] + ["house"] * 38
    # 40 alphabetic of 51 words = 0.784 < 0.8 drops; 40 of 50 = 0.8 passes
    assert gopher_quality(" ".join(words + ["12345"] * 11)) == "gopher_alpha_words"
    assert gopher_quality(" ".join(words + ["12345"] * 10)) is None


def test_gopher_stop_words():
    # one stop-word occurrence drops; two (any case) pass
    assert gopher_quality(" ".join(["The"] + ["house"] * 60)) == "gopher_stop_words"
    assert gopher_quality(" ".join(["The", "with"] + ["house"] * 60)) is None


# ------------------------------------------------------------------ Gopher repetition (table A1)


def only(**rule) -> GopherRepetition:
    """A repetition filter with every rule disabled (threshold 1) except the one given."""
    disabled = dict(
        max_duplicate_line_fraction=1.0, max_duplicate_paragraph_fraction=1.0,
        max_duplicate_line_char_fraction=1.0, max_duplicate_paragraph_char_fraction=1.0,
        top_ngram_thresholds=(), duplicate_ngram_thresholds=(),
    )
    return GopherRepetition(**{**disabled, **rule})


def test_gopher_repetition_defaults_are_table_a1():
    rules = GopherRepetition()
    assert (rules.max_duplicate_line_fraction, rules.max_duplicate_paragraph_fraction) == (0.30, 0.30)
    assert (rules.max_duplicate_line_char_fraction, rules.max_duplicate_paragraph_char_fraction) == (0.20, 0.20)
    assert dict(rules.top_ngram_thresholds) == {2: 0.20, 3: 0.18, 4: 0.16}
    assert dict(rules.duplicate_ngram_thresholds) == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


@pytest.mark.parametrize("separator, kind", [("\n", "line"), ("\n\n", "paragraph")])
def test_gopher_duplicate_line_and_paragraph_fraction(separator, kind):
    rule = only(**{f"max_duplicate_{kind}_fraction": 0.30})
    units = distinct_words(10, 6)
    # 10 units of which 4 repeat an earlier one: 0.4 > 0.3 drops; 3 repeats: 0.3 passes
    assert rule(separator.join(units[:6] + [units[0]] * 4)).dropped_by == f"gopher_duplicate_{kind}s"
    assert rule(separator.join(units[:7] + [units[0]] * 3)).dropped_by is None


@pytest.mark.parametrize("separator, kind", [("\n", "line"), ("\n\n", "paragraph")])
def test_gopher_duplicate_line_and_paragraph_characters(separator, kind):
    rule = only(**{f"max_duplicate_{kind}_char_fraction": 0.20})
    short_units = distinct_words(8, 20)
    # a unit repeated once among 8 distinct 20-character units; characters repeated over len(text):
    #   "\n":   80 / (160 + 160 + 9) = 0.243 drops, 40 / (80 + 160 + 9) = 0.161 passes
    #   "\n\n": 80 / (160 + 160 + 18) = 0.237 drops, 40 / (80 + 160 + 18) = 0.155 passes
    heavy = separator.join(["y" * 80] + short_units + ["y" * 80])
    light = separator.join(["z" * 40] + short_units + ["z" * 40])
    assert rule(heavy).dropped_by == f"gopher_duplicate_{kind}_chars"
    assert rule(light).dropped_by is None


# top n-gram: the repeated n-gram of 3-letter words appears K times among 100 distinct 4-letter words;
# its character fraction is 3nK / (400 + 3nK). Passing/dropping K by hand:
#   n=2, 0.20: K=16 → 96/496 = 0.194, K=17 → 102/502 = 0.203
#   n=3, 0.18: K=9 → 81/481 = 0.168,  K=10 → 90/490 = 0.184
#   n=4, 0.16: K=6 → 72/472 = 0.153,  K=7 → 84/484 = 0.174
@pytest.mark.parametrize("n, threshold, passing, dropping", [(2, 0.20, 16, 17), (3, 0.18, 9, 10), (4, 0.16, 6, 7)])
def test_gopher_top_ngram(n, threshold, passing, dropping):
    rule = only(top_ngram_thresholds=((n, threshold),))
    ngram = ["red", "fox", "jam", "cup"][:n]

    def document(copies):
        words = []
        for index, word in enumerate(distinct_words(100, 4, first="q")):
            words += [word] + (ngram if index < copies else [])
        return " ".join(words)

    assert rule(document(passing)).dropped_by is None
    assert rule(document(dropping)).dropped_by == f"gopher_top_{n}gram"


# duplicate n-grams: an n-word phrase of 3-letter words appears twice among D distinct 4-letter words;
# covered characters 6n of 4D + 6n, above threshold t exactly when D < 6n(1 - t) / (4t).
@pytest.mark.parametrize("n, threshold", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_gopher_duplicate_ngrams(n, threshold):
    rule = only(duplicate_ngram_thresholds=((n, threshold),))
    phrase = distinct_words(n, 3, first="z")
    boundary = round(6 * n * (1 - threshold) / (4 * threshold), 9)

    def document(distinct):
        filler = distinct_words(distinct, 4, first="q")
        return " ".join(phrase + filler + phrase)

    assert rule(document(math.ceil(boundary) - 1)).dropped_by == f"gopher_duplicate_{n}grams"
    assert rule(document(math.floor(boundary) + 1)).dropped_by is None


# ------------------------------------------------------------------ C4 (Raffel et al. 2020; tfds c4_utils)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A second sentence tells more about the fox.",
    "Finally the third sentence closes this short page.",
]


def test_c4_keeps_good_lines_and_removes_bad_ones():
    text = "\n".join([
        SENTENCES[0],
        "Click here to subscribe now",            # no terminal punctuation
        "This page is still loading ...",          # ends with an ellipsis
        "Four words only here.",                   # fewer than 5 words
        "Please enable Javascript to see this.",   # mentions javascript
        "Read our privacy policy before you go.",  # policy line
        "A line with " + "w" * 1001 + " in it.",   # a word over 1000 characters
        SENTENCES[1] + "[1]",                      # citation marker removed, line kept
        SENTENCES[2],
    ])
    verdict = C4Rules()(text)
    assert verdict.dropped_by is None
    assert verdict.text == "\n".join(SENTENCES)


def test_c4_five_words_per_line_boundary():
    five = "These are exactly five words."
    four = "These are four words."
    assert C4Rules()("\n".join(SENTENCES + [five])).text.endswith(five)
    assert four not in C4Rules()("\n".join(SENTENCES + [four])).text


def test_c4_min_sentences():
    assert C4Rules()("\n".join(SENTENCES[:2])).dropped_by == "c4_min_sentences"
    assert C4Rules()("\n".join(SENTENCES)).dropped_by is None


@pytest.mark.parametrize("line, rule", [
    ("Lorem ipsum dolor sit amet, consectetur.", "c4_lorem_ipsum"),
    ("The function body {return x} is shown here.", "c4_curly_bracket"),
])
def test_c4_page_rules(line, rule):
    assert C4Rules()("\n".join(SENTENCES + [line])).dropped_by == rule


# ------------------------------------------------------------------ FineWeb (Penedo et al. 2024, §3.5)


def lines_of(count: int, words_per_line: int, end: str, first: str) -> list[str]:
    """COUNT distinct lines of 8-letter words, each over 30 characters when words_per_line >= 4."""
    words = distinct_words(count * words_per_line, 8, first=first)
    return [" ".join(words[i * words_per_line : (i + 1) * words_per_line]) + end for i in range(count)]


def test_fineweb_line_punctuation():
    # 1 of 10 lines ends with punctuation (0.1 <= 0.12) drops; 2 of 10 (0.2) passes
    assert FineWebRules()("\n".join(lines_of(1, 6, ".", "a") + lines_of(9, 6, "", "b"))).dropped_by == "fineweb_line_punctuation"
    assert FineWebRules()("\n".join(lines_of(2, 6, ".", "a") + lines_of(8, 6, "", "b"))).dropped_by is None


def test_fineweb_short_lines():
    short = lines_of(67, 2, ".", "s")  # 2 * 8 + 1 + 1 = 18 characters <= 30
    long = lines_of(33, 8, ".", "l")
    # 67 of 100 lines short (0.67 >= 0.67) drops; 66 of 100 passes
    assert FineWebRules()("\n".join(short + long)).dropped_by == "fineweb_short_lines"
    assert FineWebRules()("\n".join(short[:66] + long + lines_of(1, 8, ".", "m"))).dropped_by is None


def test_fineweb_duplicate_line_characters():
    lines = lines_of(10, 4, ".", "d")  # each 4 * 8 + 3 + 1 = 36 characters
    # one repeated line: 36 / 396 = 0.091 < 0.1 passes; two: 72 / 432 = 0.167 >= 0.1 drops
    assert FineWebRules()("\n".join(lines + lines[:1])).dropped_by is None
    assert FineWebRules()("\n".join(lines + lines[:2])).dropped_by == "fineweb_duplicate_line_chars"


def test_fineweb_list_like():
    # 10 lines of 3 words: 9 newlines / 30 words = 0.3 passes; 10 lines of 2 long words: 9 / 20 = 0.45 drops
    three = [" ".join(words) + "." for words in np.array(distinct_words(30, 12, first="t")).reshape(10, 3)]
    two = [" ".join(words) + "." for words in np.array(distinct_words(20, 16, first="u")).reshape(10, 2)]
    assert FineWebRules()("\n".join(three)).dropped_by is None
    assert FineWebRules()("\n".join(two)).dropped_by == "fineweb_list_like"


# ------------------------------------------------------------------ blocklist, language, classifier, perplexity


def test_blocklist_whole_words_case_insensitive(tmp_path):
    word_list = tmp_path / "words.txt"
    word_list.write_text("# comment\nbad\nvery rude phrase\n")
    blocklist = Blocklist.from_file(word_list)
    assert blocklist("This is BAD.").dropped_by == "blocklist"
    assert blocklist("A very  rude phrase? no: a Very rude phrase!").dropped_by == "blocklist"
    assert blocklist("We played badminton.").dropped_by is None


def test_language_filter_per_language_thresholds():
    english = "The committee will meet on Thursday to discuss the budget for next year."
    french = "Le comité se réunira jeudi pour discuter du budget de l'année prochaine."
    keep_english = LanguageFilter({"en": 0.5})
    verdict = keep_english(english)
    assert verdict.dropped_by is None and verdict.annotations["language"] == "en"
    assert keep_english(french).dropped_by == "language"
    assert LanguageFilter({"en": 0.5, "fr": 0.5})(french).dropped_by is None
    assert LanguageFilter({"en": 1.01})(english).dropped_by == "language_score"


def test_quality_classifier_separates_good_from_bad(tmp_path):
    rng = np.random.default_rng(0)
    prose = "the of and to in research results method analysis evidence study data shows that".split()
    spam = "buy cheap click now free casino win bonus deal offer viagra pills discount".split()

    def corpus(vocabulary, count):
        return [" ".join(rng.choice(vocabulary, size=30)) for _ in range(count)]

    classifier = QualityClassifier(n_features=2**12).fit(corpus(prose, 60), corpus(spam, 60))
    path = tmp_path / "classifier.npz"
    classifier.save(path)
    scores = QualityClassifier.load(path).scores(corpus(prose, 20) + corpus(spam, 20))
    assert (scores[:20] > 0.5).all() and (scores[20:] < 0.5).all()
    assert ClassifierFilter(classifier)(corpus(spam, 1)[0]).dropped_by == "quality_classifier"


def test_pareto_sampling_keeps_at_the_gpt3_rate():
    class ConstantScore:
        def scores(self, texts):
            return np.full(len(texts), 0.5)

    # numpy's pareto(a) is Lomax: P(X > x) = (1 + x) ** -a, so a score s is kept with probability (2 - s) ** -9
    sampler = ClassifierFilter(ConstantScore(), pareto_alpha=9, rng=np.random.default_rng(0))
    kept = sum(sampler("text").dropped_by is None for _ in range(20_000))
    expected = 20_000 * 1.5**-9
    assert abs(kept - expected) < 4 * math.sqrt(expected)


def test_ngram_perplexity_hand_computed(tmp_path):
    # bigram, add-1, trained on "a b": V = {a, b, </s>, <unk>}; every seen transition (1 + 1) / (1 + 4) = 0.4
    model = NGramModel(order=2, k=1.0).fit(["a b"])
    assert model.perplexity("a b") == pytest.approx(2.5)
    # "b a": (0 + 1) / (1 + 4) three times → perplexity 5
    assert model.perplexity("b a") == pytest.approx(5.0)
    # unseen words are <unk>: P(<unk>|<s>) = 1/5, P(</s>|<unk>) = 1/4 (empty context count 0 + 4)
    assert model.perplexity("zebra") == pytest.approx(math.sqrt(5 * 4))
    path = tmp_path / "model.json"
    model.save(path)
    assert NGramModel.load(path).perplexity("a b") == pytest.approx(2.5)
    assert PerplexityFilter(model, 3.0)("b a").dropped_by == "perplexity"
    assert PerplexityFilter(model, 3.0)("a b").dropped_by is None
    assert PerplexityFilter.from_percentile(model, ["a b", "b a"], 50).max_perplexity == pytest.approx(3.75)


def test_apply_filters_records_the_rule_and_counts():
    documents = [{"text": "\n".join(SENTENCES), "meta": {"id": 1}}, {"text": "too short.", "meta": {"id": 2}}]
    counts = Counter()
    out = list(apply_filters(documents, [C4Rules()], counts, keep_dropped=True))
    assert [document["meta"].get("dropped_by") for document in out] == [None, "c4_min_sentences"]
    assert out[1]["text"] == "too short." and out[1]["meta"]["id"] == 2
    assert counts == {"kept": 1, "c4_min_sentences": 1}
    assert [document["meta"]["id"] for document in apply_filters(documents, [C4Rules()])] == [1]


def test_checkpoint_perplexity_matches_the_models_own_loss(tmp_path):
    import torch

    from llmlab.api import save
    from llmlab.data.filters import CheckpointLanguageModel
    from llmlab.data.tokenizer import save_tokenizer, train_bpe_tokenizer
    from llmlab.model import presets
    from llmlab.model.transformer import Model

    tokenizer = train_bpe_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = Model(presets.gpt2("tiny", vocab_size=tokenizer.get_vocab_size(), max_seq_len=8)).eval()
    save(model, tmp_path / "checkpoint", tokenizer_file=save_tokenizer(tokenizer, tmp_path / "tok"))
    reference = CheckpointLanguageModel.load(tmp_path / "checkpoint")
    short = "the cat sat"  # fits one window: perplexity = exp(the model's mean shifted cross-entropy)
    ids = torch.tensor([tokenizer.encode(short).ids])
    assert len(ids[0]) <= 9
    with torch.no_grad():
        expected = math.exp(model(ids, labels=ids).loss.item())
    assert reference.perplexity(short) == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(reference.perplexity("the cat sat on the mat " * 5))  # several windows
    assert PerplexityFilter(reference, expected * 0.99)(short).dropped_by == "perplexity"


def _top_ngram_reference(words, n):
    """Table A1's 'fraction of characters in the top n-gram', by counting tuples (the first seen among equals)."""
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    ngram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else sum(map(len, ngram)) * count / total


def _duplicate_ngram_reference(words, n):
    """Table A1's 'fraction of characters in duplicate n-grams', by marking the words of every repeated tuple."""
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    ngrams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(ngrams)
    covered = set()
    for start, ngram in enumerate(ngrams):
        if counts[ngram] > 1:
            covered.update(range(start, start + n))
    return sum(len(words[i]) for i in covered) / total


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "ccc", "the", "of", "x", "longword"]), max_size=60))
def test_word_ngram_fractions_match_counting_tuples(words):
    ngrams = WordNgrams(words)
    longest = ngrams.longest_repeat()
    for n in range(1, 12):
        assert ngrams.top_ngram_character_fraction(n) == pytest.approx(_top_ngram_reference(words, n))
        assert ngrams.duplicate_ngram_character_fraction(n) == pytest.approx(_duplicate_ngram_reference(words, n))
        repeats = len(set(tuple(words[i:i + n]) for i in range(len(words) - n + 1))) < len(words) - n + 1
        assert repeats == (n <= longest)
