"""PII scrubbing: every planted item is replaced by its typed placeholder and counted; text
without PII comes back unchanged (property test with hypothesis)."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.data.pii import luhn_valid, scrub, scrub_documents

PLANTED = [
    ("email", "<EMAIL>", "jane.doe+news@example.co.uk"),
    ("email", "<EMAIL>", "a_b@mail-server.org"),
    ("phone", "<PHONE>", "+1 (555) 123-4567"),
    ("phone", "<PHONE>", "555-987-6543"),
    ("phone", "<PHONE>", "(212) 555.0199"),
    ("phone", "<PHONE>", "+44 20 7946 0958"),
    ("phone", "<PHONE>", "+49 30 123456"),
    ("ip_address", "<IP_ADDRESS>", "192.168.0.1"),
    ("ip_address", "<IP_ADDRESS>", "8.8.4.4"),
    ("ip_address", "<IP_ADDRESS>", "2001:db8::8a2e:370:7334"),
    ("ip_address", "<IP_ADDRESS>", "fe80::1ff:fe23:4567:890a"),
    ("card", "<CARD>", "4111 1111 1111 1111"),   # Visa test number
    ("card", "<CARD>", "5500-0000-0000-0004"),   # Mastercard test number
    ("card", "<CARD>", "378282246310005"),       # American Express test number (15 digits)
    ("id", "<ID>", "123-45-6789"),
    ("credential", "<CREDENTIAL>", "admin:hunter2"),
]


@pytest.mark.parametrize("kind, placeholder, item", PLANTED, ids=[item for _, _, item in PLANTED])
def test_each_planted_item_is_replaced(kind, placeholder, item):
    if kind == "credential":
        text, expected = f"Connect to https://{item}@db.example.com/main now.", f"Connect to https://{placeholder}@db.example.com/main now."
    else:
        text, expected = f"Contact: {item}, thanks.", f"Contact: {placeholder}, thanks."
    counts = Counter()
    assert scrub(text, counts) == expected
    assert counts == {kind: 1}


def test_all_planted_items_in_one_document():
    document = " and ".join(item for kind, _, item in PLANTED if kind != "credential") + " via ftp://admin:hunter2@host/x."
    counts = Counter()
    scrubbed = scrub(document, counts)
    for _, _, item in PLANTED:
        assert item not in scrubbed
    assert counts == Counter(kind for kind, _, _ in PLANTED)


def test_luhn_against_known_numbers():
    assert luhn_valid("79927398713")  # the textbook example
    assert not luhn_valid("79927398710")


@pytest.mark.parametrize("text", [
    "In 2024, 3 of 10 people paid $1,299.99 on 2024-01-15 at 12:30:45 for version 1.2.3.",
    "Card-like but not Luhn-valid: 4111 1111 1111 1112.",
    "Slices like x[::2] and ratios 3:2 stay; so do 10.5.3 and 300.1.2.3.4.",
    "An invalid SSN 000-12-3456 and an address 999.1.1.1 stay.",
])
def test_numbers_that_are_not_pii_are_kept(text):
    assert scrub(text) == text


pii_free_text = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs"), blacklist_characters="@:"), max_size=300)


@settings(max_examples=200, deadline=None)
@given(pii_free_text)
def test_pii_free_text_is_unchanged(text):
    counts = Counter()
    assert scrub(text, counts) == text
    assert not counts


def test_scrub_documents_counts_changed_documents():
    documents = [{"text": "mail me at x@y.com", "meta": {"id": 1}}, {"text": "nothing here", "meta": {"id": 2}}]
    counts = Counter()
    out = list(scrub_documents(documents, counts))
    assert [d["text"] for d in out] == ["mail me at <EMAIL>", "nothing here"]
    assert [d["meta"]["id"] for d in out] == [1, 2]
    assert counts == {"email": 1, "documents_changed": 1}
