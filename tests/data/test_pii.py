"""PII scrubbing: every planted item is replaced by its typed placeholder and counted; text
without PII comes back unchanged (property test with hypothesis)."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.data.pii import chinese_id_valid, iban_valid, luhn_valid, scrub, scrub_documents

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


# ------------------------------------------------------------------ national phones, IBANs, Chinese IDs, versions

NATIONAL = [
    ("phone", "<PHONE>", "07700 900123"),          # UK mobile, trunk 0
    ("phone", "<PHONE>", "020 7946 0958"),         # London
    ("phone", "<PHONE>", "030/1234567"),           # Berlin
    ("phone", "<PHONE>", "0049 30 1234567"),       # 00 instead of +
    ("phone", "<PHONE>", "138 0013 8000"),         # Chinese mobile
    ("phone", "<PHONE>", "13800138000"),
    ("iban", "<IBAN>", "GB82 WEST 1234 5698 7654 32"),   # ISO 13616's example
    ("iban", "<IBAN>", "DE89 3704 0044 0532 0130 00"),   # the German example
    ("iban", "<IBAN>", "DE89370400440532013000"),
    ("id", "<ID>", "11010519491231002X"),          # GB 11643's example
]


@pytest.mark.parametrize("kind, placeholder, item", NATIONAL, ids=[item for _, _, item in NATIONAL])
def test_national_numbers_are_replaced(kind, placeholder, item):
    counts = Counter()
    assert scrub(f"Contact: {item}, thanks.", counts) == f"Contact: {placeholder}, thanks."
    assert counts == {kind: 1}


def test_numbers_run_into_chinese_text_are_replaced():
    assert scrub("请拨打13800138000或138 0013 8000联系，身份证号码11010519491231002X。") == \
        "请拨打<PHONE>或<PHONE>联系，身份证号码<ID>。"


def test_iban_mod_97_by_hand():
    # GB82 WEST 1234 5698 7654 32 → WEST12345698765432GB82 → 3214282912345698765432161182, which is 1 mod 97
    assert int("3214282912345698765432161182") % 97 == 1
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("GB83 WEST 1234 5698 7654 32") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("GB82 WEST")  # shorter than any country's IBAN


def test_chinese_id_mod_11_2_by_hand():
    # 11010519491231002 with weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2 (2^(17-i) mod 11):
    # 7+9+0+5+0+20+2+9+24+27+7+18+30+5+0+0+4 = 167; 167 mod 11 = 2, and GB 11643 maps 2 to X
    assert sum(int(d) * w for d, w in zip("11010519491231002", (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2))) == 167
    assert chinese_id_valid("11010519491231002X") and chinese_id_valid("11010519491231002x")
    assert not chinese_id_valid("110105194912310021")   # wrong check character
    assert not chinese_id_valid("110105194913310020")   # no 13th month


@pytest.mark.parametrize("text", [
    "A wrong check digit stays: GB83 WEST 1234 5698 7654 32 and DE88 3704 0044 0532 0130 00.",
    "A wrong checksum stays: 110105194912310021.",
    "Version 1.2.3.4, v 1.2.3.4, ver. 10.0.0.1, release 2.0.1.3, Build: 1.2.3.4 and 版本1.2.3.4 are versions.",
    "In 2023 we sold 1 234 567 units for 1.299,00 EUR, 15,000,000,000 stars and 15000000000 grains.",
    "ISBN 0-306-40615-2, on 03/15/2023 at 09:30, 05/2023, 012/2023, zip 02134, 0,5 l, 0.123456789.",
    "Order 0123 4567, pages 0012 of 0345, the years 2019 2020 2021 2022, 10 000 km, 1500000000 people.",
])
def test_ordinary_numbers_versions_and_bad_checksums_stay(text):
    assert scrub(text) == text


def test_an_ip_address_without_a_version_word_is_still_replaced():
    assert scrub("The server 10.0.0.1 answered; conversion 1.2.3.4 too.") == \
        "The server <IP_ADDRESS> answered; conversion <IP_ADDRESS> too."
