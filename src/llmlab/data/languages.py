"""What the quality rules need to know about a language other than English (survey §4.1; FineWeb-2, Penedo et al.
2025): how its text splits into words, which marks end its sentences, and its most frequent words.

Words are split by script rather than by per-language tokenizers: whitespace-separated tokens stripped of
punctuation, except in scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer), where
each letter with its combining marks counts as a word.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata

PUNCTUATION = string.punctuation + "…“”‘’«»—–"

# Unicode's Sentence_Terminal characters of living scripts (the stdlib's unicodedata lacks the property), plus
# Tibetan's shad: Latin/Cyrillic/Greek . ! ?, Armenian, Arabic/Urdu, Devanagari (Hindi, Bengali, ...), Myanmar,
# Ethiopic, Khmer, Mongolian, Tibetan, the double marks, and the full-width and ideographic marks of CJK.
SENTENCE_TERMINALS = ".!?։؟۔؞।॥။።፧፨។៕᠃᠉།‼‽⁇⁈⁉。！？．｡"
CLOSING_MARKS = "\"'”’»«›‹」』"  # quotes that may follow a sentence's end
WIDE_TERMINALS = "。！？．｡"  # CJK sentence ends, not followed by a space
# CJK punctuation sits between words without spaces: it separates words as whitespace does
WIDE_PUNCTUATION = "，、。！？；：「」『』（）《》〈〉【】〔〕…—·・～．｡"
MULTILINGUAL_PUNCTUATION = PUNCTUATION + SENTENCE_TERMINALS + WIDE_PUNCTUATION + "،؛„‚‹›"
_WIDE_TO_SPACE = str.maketrans(dict.fromkeys(WIDE_PUNCTUATION, " "))

# Scripts written without spaces between words. A segmenter for each would need a dictionary or a model
# (jieba, MeCab, PyThaiNLP), so each letter counts as a word, as FineWeb-2's Chinese word lengths (1 to 5) allow.
UNSPACED_BLOCKS = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3005, 0x3007), (0x3040, 0x30FF),
                   (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


def _character_class(categories: str) -> str:
    """The body of a regex character class: the code points of UNSPACED_BLOCKS whose Unicode category starts with one of CATEGORIES."""
    points = [point for first, last in UNSPACED_BLOCKS for point in range(first, last + 1)
              if unicodedata.category(chr(point))[0] in categories]
    runs: list[list[int]] = []  # [first, last] of each run of consecutive code points
    for point in points:
        if runs and runs[-1][1] == point - 1:
            runs[-1][1] = point
        else:
            runs.append([point, point])
    return "".join(f"{re.escape(chr(first))}-{re.escape(chr(last))}" for first, last in runs)


@functools.cache
def _unspaced_patterns() -> tuple[re.Pattern, re.Pattern]:
    """A letter of an unspaced script; such a letter with its combining marks, or a run of anything else (built once)."""
    letters, marks = _character_class("LN"), _character_class("M")
    return re.compile(f"[{letters}]"), re.compile(f"[{letters}][{marks}]*|[^{letters}{marks}]+")


SENTENCE_END = re.compile(
    f"[{re.escape(SENTENCE_TERMINALS)}]+[{re.escape(CLOSING_MARKS)}]*(?=\\s|$)"
    f"|[{WIDE_TERMINALS}]+[{re.escape(CLOSING_MARKS)}]*")

# Each language's most frequent function words (hand-curated, as Gopher's English list), for the stop-word rule.
# Chinese and Japanese lists are single characters, since there a character is a word.
STOP_WORDS = {
    "de": ("der", "die", "das", "und", "in", "zu", "den", "von", "mit", "ist", "des", "sich", "nicht", "auf", "für",
           "im", "dem", "ein", "eine"),
    "fr": ("le", "la", "les", "de", "des", "du", "et", "en", "un", "une", "est", "que", "qui", "dans", "pour",
           "pas", "sur", "au", "il"),
    "es": ("el", "la", "los", "las", "de", "del", "y", "en", "que", "un", "una", "es", "por", "con", "para", "se",
           "no", "lo"),
    "it": ("il", "la", "le", "di", "del", "della", "e", "che", "un", "una", "è", "per", "in", "non", "con", "si",
           "sono"),
    "pt": ("o", "a", "os", "as", "de", "do", "da", "e", "que", "um", "uma", "em", "para", "com", "não", "é", "se",
           "no", "na"),
    "nl": ("de", "het", "een", "en", "van", "in", "is", "dat", "op", "te", "met", "voor", "niet", "zijn"),
    "pl": ("i", "w", "nie", "na", "się", "z", "do", "że", "to", "jest", "jak", "o"),
    "ru": ("и", "в", "не", "на", "что", "с", "по", "как", "это", "он", "я", "к", "из", "то", "а", "но"),
    "tr": ("ve", "bir", "bu", "da", "de", "ile", "için", "çok", "ne", "gibi", "daha", "olarak"),
    "ar": ("في", "من", "على", "أن", "إلى", "عن", "مع", "هذا", "التي", "الذي", "ما", "لا"),
    "hi": ("के", "है", "में", "की", "और", "को", "से", "का", "एक", "पर", "यह", "नहीं", "भी"),
    "zh": ("的", "是", "在", "了", "和", "有", "也", "这", "不", "我", "就", "人", "一", "他", "们", "为", "中", "都"),
    "ja": ("の", "に", "は", "を", "が", "で", "と", "た", "し", "て", "も", "な"),
}
# languages whose text is mostly in an unspaced script, so that their mean word length is about one character
CHARACTER_WORD_LANGUAGES = ("zh", "ja", "th", "lo", "my", "km")


def normalise_language(language: str | None) -> str | None:
    """A language tag's primary subtag in lower case ("zh-Hans" → "zh", "pt_BR" → "pt"); None stays None."""
    if not language:
        return None
    return language.lower().replace("_", "-").split("-")[0]


def multilingual_words(text: str) -> list[str]:
    """The words of a text in any script: whitespace tokens stripped of punctuation, a word per letter in unspaced scripts."""
    unspaced, word_or_run = _unspaced_patterns()
    words = []
    for token in text.translate(_WIDE_TO_SPACE).split():
        token = token.strip(MULTILINGUAL_PUNCTUATION)
        if not token:
            continue
        if unspaced.search(token):
            words.extend(part for part in (run.strip(MULTILINGUAL_PUNCTUATION)
                                           for run in word_or_run.findall(token)) if part)
        else:
            words.append(token)
    return words


def count_multilingual_sentences(text: str) -> int:
    """Sentences in a text of any script: runs of sentence terminals before whitespace or the end, or CJK terminals anywhere."""
    return len(SENTENCE_END.findall(text))
