"""Unit tests for billing.pins: Luhn, PIN formats, density, generation, hashing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from billing.pins import (
    DEFAULT_MAX_PIN_DENSITY,
    PinFormat,
    PinSpaceError,
    check_density,
    generate_pins,
    looks_like_pin,
    luhn_check_digit,
    luhn_valid,
    make_pin_hasher,
    pin_hash,
)

digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=30)


@st.composite
def pin_formats(draw: st.DrawFn) -> PinFormat:
    """Any valid PinFormat."""
    length = draw(st.integers(min_value=10, max_value=16))
    prefix = draw(st.text(alphabet="0123456789", max_size=length - 7))
    return PinFormat(length, prefix)


# --- Luhn -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "check"),
    [
        ("7992739871", "3"),  # classic textbook example: 79927398713
        ("0", "0"),
        ("1", "8"),
        ("453201511283036", "6"),  # Visa test number 4532015112830366
        ("000000000", "0"),
    ],
)
def test_luhn_check_digit_examples(payload: str, check: str) -> None:
    assert luhn_check_digit(payload) == check
    assert luhn_valid(payload + check)


@pytest.mark.parametrize("bad", ["", "12a4", "12 34", "١٢٣", "+123"])
def test_luhn_check_digit_rejects_non_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        luhn_check_digit(bad)


@pytest.mark.parametrize(
    "number", ["79927398710", "79927398714", "", "0", "7", "7992739871a", "٧٩٩٢٧٣٩٨٧١٣"]
)
def test_luhn_valid_rejects(number: str) -> None:
    assert not luhn_valid(number)


@given(digit_strings)
def test_luhn_check_digit_makes_number_valid(payload: str) -> None:
    number = payload + luhn_check_digit(payload)
    assert luhn_valid(number)
    assert sum(luhn_valid(payload + d) for d in "0123456789") == 1


@given(digit_strings, st.data())
def test_luhn_detects_every_single_digit_error(payload: str, data: st.DataObject) -> None:
    number = payload + luhn_check_digit(payload)
    position = data.draw(st.integers(min_value=0, max_value=len(number) - 1))
    replacement = data.draw(st.sampled_from("0123456789"))
    assume(replacement != number[position])
    changed = number[:position] + replacement + number[position + 1 :]
    assert not luhn_valid(changed)


# --- PinFormat --------------------------------------------------------------


def test_pin_format_space_and_random_digits() -> None:
    assert PinFormat(12).random_digits == 11
    assert PinFormat(12).space == 10**11
    assert PinFormat(10, "123").random_digits == 6
    assert PinFormat(10, "123").space == 10**6
    assert PinFormat(16, "99").space == 10**13


@pytest.mark.parametrize(
    ("length", "prefix", "fragment"),
    [
        (9, "", "from 10 to 16"),
        (17, "", "from 10 to 16"),
        (True, "", "from 10 to 16"),
        (12.0, "", "from 10 to 16"),
        (12, "12a", "digits"),
        (12, " 12", "digits"),
        (12, "١٢", "digits"),
        (10, "1234", "at least 6"),
        (16, "1234567890", "at least 6"),
    ],
)
def test_pin_format_rejects(length: object, prefix: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as excinfo:
        PinFormat(length, prefix)  # type: ignore[arg-type]
    assert "\n" not in str(excinfo.value)


def test_pin_format_is_frozen() -> None:
    fmt = PinFormat(12)
    with pytest.raises(AttributeError):
        fmt.length = 13  # type: ignore[misc]


# --- check_density ----------------------------------------------------------


def test_default_max_density() -> None:
    assert DEFAULT_MAX_PIN_DENSITY == 1e-4


def test_check_density_boundary_is_inclusive() -> None:
    fmt = PinFormat(10, "123")  # space 10**6, limit 100 cards at 1e-4
    check_density(fmt, existing=0, new=100, max_density=DEFAULT_MAX_PIN_DENSITY)
    check_density(fmt, existing=60, new=40, max_density=DEFAULT_MAX_PIN_DENSITY)
    check_density(fmt, existing=100, new=0, max_density=DEFAULT_MAX_PIN_DENSITY)
    with pytest.raises(PinSpaceError):
        check_density(fmt, existing=0, new=101, max_density=DEFAULT_MAX_PIN_DENSITY)
    with pytest.raises(PinSpaceError):
        check_density(fmt, existing=60, new=41, max_density=DEFAULT_MAX_PIN_DENSITY)


def test_check_density_message_states_density_and_suggests_longer_pin() -> None:
    with pytest.raises(PinSpaceError) as excinfo:
        check_density(PinFormat(12), existing=0, new=10**8, max_density=1e-4)
    message = str(excinfo.value)
    assert "1.00e-03" in message
    assert "longer PIN (13 digits or more)" in message
    assert "\n" not in message
    assert isinstance(excinfo.value, ValueError)


def test_check_density_when_no_length_is_enough() -> None:
    with pytest.raises(PinSpaceError, match="smaller batch"):
        check_density(PinFormat(16), existing=0, new=10**12, max_density=1e-4)


@given(
    pin_formats(),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.sampled_from([1e-4, 1e-3, 0.5, 1]),
)
def test_check_density_matches_exact_ratio(
    fmt: PinFormat, existing: int, new: int, max_density: float
) -> None:
    denominator = {1e-4: 10**4, 1e-3: 10**3, 0.5: 2, 1: 1}[max_density]
    too_dense = (existing + new) * denominator > fmt.space
    if too_dense:
        with pytest.raises(PinSpaceError):
            check_density(fmt, existing, new, max_density)
    else:
        check_density(fmt, existing, new, max_density)


@pytest.mark.parametrize(
    ("existing", "new", "max_density"),
    [(-1, 0, 1e-4), (0, -1, 1e-4), (0, 0, 0.0), (0, 0, 1.5), (0, 0, float("nan")), (0, 0, -1e-4)],
)
def test_check_density_rejects_bad_arguments(existing: int, new: int, max_density: float) -> None:
    with pytest.raises(ValueError):
        check_density(PinFormat(12), existing, new, max_density)


# --- generate_pins ----------------------------------------------------------


@given(pin_formats(), st.integers(min_value=0, max_value=300), st.integers())
def test_generated_pins_are_well_formed_and_distinct(fmt: PinFormat, count: int, seed: int) -> None:
    pins = list(generate_pins(fmt, count, rng=random.Random(seed)))
    assert len(pins) == count
    assert len(set(pins)) == count
    for pin in pins:
        assert len(pin) == fmt.length
        assert pin.startswith(fmt.prefix)
        assert pin.isascii() and pin.isdigit()
        assert luhn_valid(pin)
        assert looks_like_pin(pin)


def test_generate_pins_default_rng_is_system_random() -> None:
    pins = list(generate_pins(PinFormat(12, "7"), 1000))
    assert len(set(pins)) == 1000
    assert all(p.startswith("7") and len(p) == 12 and luhn_valid(p) for p in pins)


def test_generate_pins_is_reproducible_with_injected_rng() -> None:
    fmt = PinFormat(12)
    first = list(generate_pins(fmt, 50, rng=random.Random(42)))
    second = list(generate_pins(fmt, 50, rng=random.Random(42)))
    third = list(generate_pins(fmt, 50, rng=random.Random(43)))
    assert first == second
    assert first != third


def test_generated_pins_are_not_sequential() -> None:
    pins = list(generate_pins(PinFormat(12), 200, rng=random.Random(7)))
    random_parts = [int(p[:-1]) for p in pins]
    steps = {b - a for a, b in itertools.pairwise(random_parts)}
    assert len(steps) > 100


def test_generated_random_part_covers_all_digits_evenly() -> None:
    pins = list(generate_pins(PinFormat(10), 20_000, rng=random.Random(1)))
    counts = [0] * 10
    for pin in pins:
        for ch in pin[:-1]:
            counts[int(ch)] += 1
    expected = 20_000 * 9 / 10
    assert all(abs(c - expected) < 0.05 * expected for c in counts)


class _RepeatingRandom(random.Random):
    """An rng whose first draws repeat, to exercise duplicate rejection."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def randrange(self, *args: int, **kwargs: int) -> int:  # type: ignore[override]
        self.calls += 1
        return 0 if self.calls <= 3 else super().randrange(*args, **kwargs)


def test_generate_pins_skips_duplicate_draws() -> None:
    fmt = PinFormat(16)  # 15 random digits: 5 values per draw, all zero for 3 draws
    pins = list(generate_pins(fmt, 5, rng=_RepeatingRandom()))
    assert len(set(pins)) == 5
    assert pins[0] == "000000000000000" + luhn_check_digit("000000000000000")


def test_generate_pins_validates_eagerly() -> None:
    fmt = PinFormat(10, "123")
    with pytest.raises(ValueError):
        generate_pins(fmt, -1)
    with pytest.raises(PinSpaceError):
        generate_pins(fmt, fmt.space + 1)
    assert list(generate_pins(fmt, 0)) == []


# --- hashing ----------------------------------------------------------------


def test_pin_hash_rfc4231_vector() -> None:
    key = b"\x0b" * 20
    assert pin_hash(key, "Hi There") == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )


@given(st.binary(min_size=1, max_size=80), st.text(max_size=20))
def test_hasher_matches_pin_hash(key: bytes, pin: str) -> None:
    expected = hmac.new(key, pin.encode("utf-8"), hashlib.sha256).hexdigest()
    hasher = make_pin_hasher(key)
    assert pin_hash(key, pin) == expected
    assert hasher(pin) == expected
    assert hasher(pin) == expected  # the base state is never consumed


@given(
    st.binary(min_size=1, max_size=64),
    st.binary(min_size=1, max_size=64),
    st.text(alphabet="0123456789", min_size=10, max_size=16),
)
def test_pin_hash_differs_per_key(key_a: bytes, key_b: bytes, pin: str) -> None:
    assume(key_a != key_b)
    assert pin_hash(key_a, pin) != pin_hash(key_b, pin)
    assert make_pin_hasher(key_a)(pin) != make_pin_hasher(key_b)(pin)


def test_pin_hash_differs_per_pin_and_is_hex() -> None:
    key = b"k" * 32
    a, b = pin_hash(key, "1234567890"), pin_hash(key, "1234567891")
    assert a != b
    assert len(a) == 64 and all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize("key", [b"", "text-key", None])
def test_pin_hash_rejects_missing_key(key: object) -> None:
    with pytest.raises(ValueError):
        pin_hash(key, "1234567890")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_pin_hasher(key)  # type: ignore[arg-type]


# --- looks_like_pin ---------------------------------------------------------


def test_looks_like_pin_examples() -> None:
    valid = "123456789" + luhn_check_digit("123456789")
    assert looks_like_pin(valid)
    assert not looks_like_pin(valid[:-1] + str((int(valid[-1]) + 1) % 10))
    assert looks_like_pin("79927398713")
    assert not looks_like_pin("4992739871")  # 10 digits, Luhn invalid
    assert not looks_like_pin("12345678" + luhn_check_digit("12345678"))  # 9 digits
    long_payload = "1" * 16
    assert not looks_like_pin(long_payload + luhn_check_digit(long_payload))  # 17 digits
    assert not looks_like_pin("")
    assert not looks_like_pin("79927398713 ")
    assert not looks_like_pin("7992-7398-713")
    assert not looks_like_pin(None)  # type: ignore[arg-type]


def test_looks_like_pin_custom_lengths() -> None:
    pin = "79927398713"
    assert looks_like_pin(pin, fmt_lengths=(11,))
    assert not looks_like_pin(pin, fmt_lengths=(12, 16))


@given(pin_formats(), st.integers(), st.data())
def test_looks_like_pin_rejects_one_changed_digit(
    fmt: PinFormat, seed: int, data: st.DataObject
) -> None:
    (pin,) = generate_pins(fmt, 1, rng=random.Random(seed))
    assert looks_like_pin(pin)
    position = data.draw(st.integers(min_value=0, max_value=len(pin) - 1))
    replacement = data.draw(st.sampled_from("0123456789"))
    assume(replacement != pin[position])
    assert not looks_like_pin(pin[:position] + replacement + pin[position + 1 :])
