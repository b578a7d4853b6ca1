"""Privacy reduction (survey §4.1.4): replace personally identifiable information by typed placeholders.

Regular expressions with validation (Luhn for card numbers, `ipaddress` for IPs), hand-written
because Presidio and scrubadub need spaCy models downloaded; the patterns follow BigScience's
and datatrove's PII formatters (e-mail, IP) and extend them to phones, cards, IDs and URL credentials.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator

PLACEHOLDERS = {
    "credential": "<CREDENTIAL>",
    "email": "<EMAIL>",
    "ip_address": "<IP_ADDRESS>",
    "card": "<CARD>",
    "id": "<ID>",
    "phone": "<PHONE>",
}

# scheme://user:password@host — the user-info part is replaced, the host kept
URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# US social security number: not 000/666/9xx area, not 00 group, not 0000 serial
SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# international (+CC then groups) or North American ((555) 123-4567, 555-123-4567, 555.123.4567)
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"
    r"|(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4})(?![\w-])"
)


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum that card numbers carry."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _valid_ipv6(candidate: str) -> bool:
    """Whether a candidate is a real IPv6 address with at least two non-empty groups (not Python's [::2])."""
    if len(re.findall(r"[0-9A-Fa-f]+", candidate)) < 2:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _valid_ipv4(candidate: str) -> bool:
    """Whether a candidate is a dotted-quad IPv4 address."""
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def _valid_card(candidate: str) -> bool:
    """Whether a candidate is 13-19 digits passing the Luhn check."""
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _valid_phone(candidate: str) -> bool:
    """Whether a candidate has 7 to 15 digits (E.164 allows at most 15)."""
    return 7 <= sum(character.isdigit() for character in candidate) <= 15


# order matters: credentials before e-mails (user:pass@host), cards and IDs before phones
RULES = (
    ("credential", URL_CREDENTIALS, None),
    ("email", EMAIL, None),
    ("ip_address", IPV6, _valid_ipv6),
    ("ip_address", IPV4, _valid_ipv4),
    ("card", CARD, _valid_card),
    ("id", SSN, None),
    ("phone", PHONE, _valid_phone),
)


def scrub(text: str, counts: Counter | None = None) -> str:
    """Replace every PII item in a text by its typed placeholder, counting replacements per kind in COUNTS."""
    counts = counts if counts is not None else Counter()
    for kind, pattern, valid in RULES:
        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            if valid is not None and not valid(match.group()):
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
