"""Privacy reduction (survey §4.1.4): replace personally identifiable information by typed placeholders.

Regular expressions with validation (Luhn for card numbers, mod 97 for IBANs, ISO 7064 MOD 11-2 for Chinese
resident IDs, `ipaddress` for IPs), hand-written because Presidio and scrubadub need spaCy models downloaded (and
the checksums are a line each); the patterns follow BigScience's and datatrove's PII formatters (e-mail, IP) and
extend them to phones (international, North American, national with a trunk 0, Chinese mobiles), cards, IBANs,
IDs and URL credentials.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator

PLACEHOLDERS = {
    "credential": "<CREDENTIAL>",
    "email": "<EMAIL>",
    "ip_address": "<IP_ADDRESS>",
    "card": "<CARD>",
    "iban": "<IBAN>",
    "id": "<ID>",
    "phone": "<PHONE>",
}

# scheme://user:password@host — the user-info part is replaced, the host kept
URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
# "version 1.2.3.4", "v 1.2.3.4", "ver. 1.2.3.4", "release 1.2.3.4", "Build: 1.2.3.4", "版本 1.2.3.4" are versions
VERSION_BEFORE = re.compile(r"(?:\b(?:versi[oó]n|versão|ver\.?|v|release|rel\.|build)|版本)\s*[:#]?\s*$", re.IGNORECASE)
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# US social security number: not 000/666/9xx area, not 00 group, not 0000 serial
SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# international (+CC, or 00CC not inside a longer number, then groups) or North American ((555) 123-4567, 555-123-4567, 555.123.4567)
PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|(?<!\d[ -])00(?=[1-9]\d{0,2}[ .-][1-9]))\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"
    r"|(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4})(?![\w-])"
)
# In the patterns below the boundaries are ASCII, since Chinese or Japanese text runs into numbers without a space,
# and the look-behinds follow the first character (".": it), which lets re scan for that character (twice as fast).
# national, with the trunk 0 and an area code set apart (07700 900123, 030/1234567, 020 7946 0958), not inside a
# longer number
NATIONAL_PHONE = re.compile(
    r"0(?<![0-9A-Za-z_+/.,-].)(?<!\d[ -].)[1-9]\d{1,4}(?:/|[ -])\d{3,8}(?:[ -]\d{2,4}){0,2}(?![0-9A-Za-z_/-]|[.,]\d)"
)
# Chinese mobile numbers: 1[3-9]X XXXX XXXX, with or without separators
CHINESE_MOBILE = re.compile(r"1(?<![0-9A-Za-z_+.-].)(?<!\d[ -].)[3-9]\d(?:\d{8}|([ -])\d{4}\1\d{4})(?![0-9A-Za-z_-]|[.,]\d)")
# country, 2 check digits, 11 to 30 letters and digits of the account, printed in groups of 4 or not at all
IBAN = re.compile(r"[A-Z](?<![0-9A-Za-z].)[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![0-9A-Za-z])")
# Chinese resident identity number (GB 11643): region, birth date YYYYMMDD, sequence, check character
CHINESE_ID = re.compile(r"[1-9](?<![0-9A-Za-z].)\d{5}(?:18|19|20)\d{9}[\dXx](?![0-9A-Za-z])")


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum that card numbers carry."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether an IBAN (spaces allowed) has 15 to 34 characters and passes ISO 13616's mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    return int("".join(str(int(character, 36)) for character in compact[4:] + compact[:4])) % 97 == 1


def chinese_id_valid(number: str) -> bool:
    """Whether an 18-character Chinese resident ID has a real birth date and passes ISO 7064 MOD 11-2."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        datetime.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    total = sum(int(digit) * pow(2, 17 - position, 11) for position, digit in enumerate(number[:17]))
    return "10X98765432"[total % 11] == number[17].upper()


def _valid_ipv6(match: re.Match) -> bool:
    """Whether a candidate is a real IPv6 address with at least two non-empty groups (not Python's [::2])."""
    candidate = match.group()
    if len(re.findall(r"[0-9A-Fa-f]+", candidate)) < 2:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _valid_ipv4(match: re.Match) -> bool:
    """Whether a candidate is a dotted-quad IPv4 address that the words before it do not call a version."""
    if VERSION_BEFORE.search(match.string[max(0, match.start() - 20):match.start()]):
        return False
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return False
    return True


def _valid_card(match: re.Match) -> bool:
    """Whether a candidate is 13-19 digits passing the Luhn check, outside an IBAN."""
    digits = re.sub(r"[ -]", "", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits) and not _inside_iban_shape(match)


def _inside_iban_shape(match: re.Match) -> bool:
    """Whether a candidate lies within something shaped like an IBAN (one that failed its check stays whole)."""
    window = IBAN.finditer(match.string, max(0, match.start() - 42), match.end() + 42)
    return any(shape.start() <= match.start() and match.end() <= shape.end() for shape in window)


def _digits(match: re.Match) -> int:
    """How many digits a candidate has."""
    return sum(character.isdigit() for character in match.group())


def _valid_phone(match: re.Match) -> bool:
    """Whether a candidate has 7 to 15 digits (E.164 allows at most 15), outside an IBAN."""
    return 7 <= _digits(match) <= 15 and not _inside_iban_shape(match)


def _valid_national_phone(match: re.Match) -> bool:
    """Whether a national number has 9 to 12 digits, trunk 0 included (UK, German, French numbers have 10 or 11), outside an IBAN."""
    return 9 <= _digits(match) <= 12 and not _inside_iban_shape(match)


def _valid_chinese_mobile(match: re.Match) -> bool:
    """Whether an 11-digit 1[3-9]... number is a mobile rather than a round count (15000000000), outside an IBAN."""
    return not match.group().endswith("0000000") and not _inside_iban_shape(match)


# order matters: credentials before e-mails (user:pass@host), IBANs and IDs before cards, all before phones
RULES = (
    ("credential", URL_CREDENTIALS, None),
    ("email", EMAIL, None),
    ("ip_address", IPV6, _valid_ipv6),
    ("ip_address", IPV4, _valid_ipv4),
    ("iban", IBAN, lambda match: iban_valid(match.group())),
    ("id", CHINESE_ID, lambda match: chinese_id_valid(match.group())),
    ("card", CARD, _valid_card),
    ("id", SSN, None),
    ("phone", PHONE, _valid_phone),
    ("phone", NATIONAL_PHONE, _valid_national_phone),
    ("phone", CHINESE_MOBILE, _valid_chinese_mobile),
)
# every rule after IPv6 needs an ASCII digit: a text without one is spared their passes
RULES_WITHOUT_DIGITS = RULES[:3]
ASCII_DIGIT = re.compile("[0-9]")


def scrub(text: str, counts: Counter | None = None) -> str:
    """Replace every PII item in a text by its typed placeholder, counting replacements per kind in COUNTS."""
    counts = counts if counts is not None else Counter()
    for kind, pattern, valid in RULES if ASCII_DIGIT.search(text) else RULES_WITHOUT_DIGITS:
        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            if valid is not None and not valid(match):
                return match.group()
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text


def scrub_documents(documents: Iterable[dict], counts: Counter | None = None) -> Iterator[dict]:
    """Yield documents with PII replaced; COUNTS gains per-kind replacement counts and documents_changed."""
    counts = counts if counts is not None else Counter()
    for document in documents:
        before = sum(counts[kind] for kind in PLACEHOLDERS)
        text = scrub(document["text"], counts)
        if sum(counts[kind] for kind in PLACEHOLDERS) > before:
            counts["documents_changed"] += 1
        yield {**document, "text": text}
