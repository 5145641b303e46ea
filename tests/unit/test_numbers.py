"""Unit tests for billing.numbers: telephone number normalization and rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.numbers import NumberRules, normalize_number

DEFAULT = NumberRules()
UK = NumberRules(international_prefixes=("00",), national_prefix="0", country_code="44")


# --- plain numbers and separators -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+442079460018", "442079460018"),
        ("+44 20 7946 0018", "442079460018"),
        ("+44 (20) 7946-0018", "442079460018"),
        ("+1.212.555.0100", "12125550100"),
        ("  +44 20 7946 0018\t", "442079460018"),
        ("442079460018", "442079460018"),
        ("2079460018", "2079460018"),  # no rule applies: left as it is
        ("0207946", "0207946"),  # national-looking, but no national rule configured
    ],
)
def test_plain_numbers(raw: str, expected: str) -> None:
    assert normalize_number(raw, DEFAULT) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "+",
        "00",
        "011",
        "anonymous",
        "Anonymous",
        "*67123456",
        "#123",  # '#' is only accepted as a configured strip prefix
        "12345a",
        "44+1234",
        "++441234",
        "+44/1234",
        "+44_1234",
        "١٢٣٤٥",  # non-ASCII digits are not dialable
        "+0441234",  # E.164 country codes never start with 0
        "000441234",
    ],
)
def test_unusable_numbers_give_empty(raw: str) -> None:
    assert normalize_number(raw, DEFAULT) == ""


# --- URIs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sip:+441234@host;user=phone", "441234"),
        ("sip:+441234@10.0.0.1:5060;user=phone", "441234"),
        ("SIP:+441234@host", "441234"),
        ("sips:00441234@host", "441234"),
        ("sip:+441234:secret@host", "441234"),
        ("sip:+441234;phone-context=example.com@host", "441234"),
        ("tel:+44-1234", "441234"),
        ("TEL:+44-1234;phone-context=+44", "441234"),
        ('"Bob" <sip:+44 1234@host>;tag=abc', "441234"),
        ("<tel:+44.1234>", "441234"),
        ("sip:alice@example.com", ""),
        ("sip:example.com", ""),
        ("tel:", ""),
    ],
)
def test_uri_user_part(raw: str, expected: str) -> None:
    assert normalize_number(raw, DEFAULT) == expected


def test_uri_percent_encoded_strip_prefix() -> None:
    rules = NumberRules(strip_prefixes=("#",))
    assert normalize_number("sip:%23441234@host", rules) == "441234"


# --- international prefixes -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00442079460018", "442079460018"),
        ("00 44 20 7946 0018", "442079460018"),
        ("011442079460018", "442079460018"),
        ("01112125550100", "12125550100"),
    ],
)
def test_international_prefixes(raw: str, expected: str) -> None:
    assert normalize_number(raw, DEFAULT) == expected


def test_international_prefix_longest_match_first() -> None:
    rules = NumberRules(international_prefixes=("01", "011"))
    assert normalize_number("011441234", rules) == "441234"
    assert normalize_number("01441234", rules) == "441234"


def test_international_prefix_stripped_once() -> None:
    # After "00", a number starting with 0 is not E.164, so it is not stripped again.
    assert normalize_number("0000441234", DEFAULT) == ""


# --- national prefix ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("020 7946 0018", "442079460018"),
        ("02079460018", "442079460018"),
        ("+44 20 7946 0018", "442079460018"),
        ("0044 20 7946 0018", "442079460018"),  # international prefix wins over national
        ("442079460018", "442079460018"),
        ("0", ""),  # a national prefix with nothing after it
    ],
)
def test_national_prefix(raw: str, expected: str) -> None:
    assert normalize_number(raw, UK) == expected


def test_international_prefix_is_tried_before_national() -> None:
    rules = NumberRules(national_prefix="0", country_code="44")  # default ("00", "011")
    assert normalize_number("011 1 212 555 0100", rules) == "12125550100"
    assert normalize_number("0121 496 0000", rules) == "441214960000"


def test_national_prefix_needs_country_code() -> None:
    assert normalize_number("02079460018", NumberRules(national_prefix="0")) == "02079460018"
    assert normalize_number("02079460018", NumberRules(country_code="44")) == "02079460018"


def test_multi_digit_national_prefix() -> None:
    russia = NumberRules(international_prefixes=("810",), national_prefix="8", country_code="7")
    assert normalize_number("8 (495) 123-45-67", russia) == "74951234567"
    assert normalize_number("810 44 20 7946 0018", russia) == "442079460018"


# --- strip prefixes -----------------------------------------------------------


def test_strip_prefixes_examples() -> None:
    rules = NumberRules(strip_prefixes=("#", "101#"))
    assert normalize_number("#00441234", rules) == "441234"
    assert normalize_number("101#+441234", rules) == "441234"
    assert normalize_number("101#441234", rules) == "441234"
    assert normalize_number("441234", rules) == "441234"


def test_strip_prefixes_longest_match_first() -> None:
    rules = NumberRules(strip_prefixes=("10", "101#"))
    assert normalize_number("101#441234", rules) == "441234"  # "10" first would leave "1#..."
    assert normalize_number("10441234", rules) == "441234"


def test_strip_prefixes_apply_to_raw_user_part_before_separators() -> None:
    rules = NumberRules(strip_prefixes=("101#",))
    assert normalize_number("101# 44 1234", rules) == "441234"
    assert normalize_number("10-1#441234", rules) == ""  # separators are not removed first
    assert normalize_number("sip:101#441234@host", rules) == "441234"


def test_strip_prefix_stripped_once() -> None:
    rules = NumberRules(strip_prefixes=("#",))
    assert normalize_number("##441234", rules) == ""


# --- properties ---------------------------------------------------------------

digit_strings = st.text(alphabet="0123456789", max_size=20)
number_like = st.text(alphabet="0123456789+-.() #*abc:@;<>", max_size=25)


@given(digit_strings)
def test_idempotent_on_digit_strings(raw: str) -> None:
    once = normalize_number(raw, DEFAULT)
    assert normalize_number(once, DEFAULT) == once


@given(number_like)
def test_idempotent_on_anything_with_default_rules(raw: str) -> None:
    once = normalize_number(raw, DEFAULT)
    assert normalize_number(once, DEFAULT) == once


@given(number_like)
def test_idempotent_with_national_rule(raw: str) -> None:
    once = normalize_number(raw, UK)
    assert normalize_number(once, UK) == once


@given(st.text(max_size=40), st.sampled_from([DEFAULT, UK, NumberRules(strip_prefixes=("#",))]))
def test_result_is_ascii_digits_or_empty(raw: str, rules: NumberRules) -> None:
    result = normalize_number(raw, rules)
    assert result == "" or (result.isascii() and result.isdigit())


@given(st.text(alphabet="0123456789", min_size=1, max_size=12).filter(lambda s: s[0] != "0"))
def test_every_spelling_of_a_number_agrees(subscriber: str) -> None:
    international = "44" + subscriber
    spellings = [
        "+" + international,
        "00" + international,
        "+44 " + subscriber,
        "0044-" + subscriber,
        "tel:+44-" + subscriber,
        f"sip:+{international}@gw.example.com;user=phone",
        "0" + subscriber,  # national form, UK rules
    ]
    assert {normalize_number(s, UK) for s in spellings} == {international}


# --- NumberRules ------------------------------------------------------------


def test_rules_defaults() -> None:
    assert DEFAULT.international_prefixes == ("00", "011")
    assert DEFAULT.national_prefix == ""
    assert DEFAULT.country_code == ""
    assert DEFAULT.strip_prefixes == ()


def test_rules_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT.country_code = "44"  # type: ignore[misc]


def test_from_mapping_converts_lists_to_tuples() -> None:
    rules = NumberRules.from_mapping(
        {
            "international_prefixes": ["00"],
            "national_prefix": "0",
            "country_code": "44",
            "strip_prefixes": ["#", "101#"],
        }
    )
    assert rules == NumberRules(("00",), "0", "44", ("#", "101#"))
    assert isinstance(rules.international_prefixes, tuple)
    assert isinstance(rules.strip_prefixes, tuple)


def test_from_mapping_empty_gives_defaults() -> None:
    assert NumberRules.from_mapping({}) == NumberRules()


def test_from_mapping_single_string_is_one_prefix() -> None:
    assert NumberRules.from_mapping({"international_prefixes": "00"}).international_prefixes == (
        "00",
    )


@pytest.mark.parametrize(
    "mapping",
    [
        {"international_prefixes": ["00", "0x"]},
        {"international_prefixes": [""]},
        {"international_prefixes": [0]},
        {"international_prefixes": 0},
        {"national_prefix": "O"},
        {"national_prefix": 0},
        {"country_code": "4a"},
        {"country_code": "044"},
        {"country_code": "1234"},
        {"country_code": 44},
        {"strip_prefixes": [""]},
        {"strip_prefixes": [" #"]},
        {"strip_prefixes": [1]},
        {"internatonal_prefixes": ["00"]},  # misspelt key
    ],
)
def test_from_mapping_rejects(mapping: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NumberRules.from_mapping(mapping)


def test_constructor_validates_too() -> None:
    with pytest.raises(ValueError):
        NumberRules(international_prefixes=("+",))
    with pytest.raises(ValueError):
        NumberRules(international_prefixes="00")  # type: ignore[arg-type]
