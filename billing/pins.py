"""PIN generation, validation and hashing for prepaid calling cards.

A PIN is ``prefix + random digits + Luhn check digit``. The random digits come
from a CSPRNG and are never sequential, so one known card says nothing
about the others. The Luhn digit catches typos (every single-digit error and
most adjacent transpositions) before any database lookup.

PINs are stored only as keyed hashes (HMAC-SHA256 under a server key) so a
leaked database cannot be brute-forced offline without that key as well.

This module is pure: no I/O, no clock reads, no logging. Nothing here ever
includes a PIN in an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from fractions import Fraction

from billing.numbers import is_ascii_digits

MIN_PIN_LENGTH = 10
"""Shortest PIN accepted, check digit included."""

MAX_PIN_LENGTH = 16
"""Longest PIN accepted, check digit included (keypad entry stays practical)."""

MIN_RANDOM_DIGITS = 6
"""Fewest random digits a format may have, whatever its prefix."""

DEFAULT_MAX_PIN_DENSITY = 1e-4
"""Highest share of a PIN space that may hold issued cards.

Decision: at 1e-4 someone typing random well-formed PINs hits a live card
at most once per 10,000 tries. With per-caller lockout after a few failures,
that makes guessing impractical. A batch that would go over it has to use a
longer PIN instead.
"""

_DIGITS = b"0123456789"
# Maps ASCII digits to their values, and to the digit sum of twice their
# value (the Luhn "doubling" step), so a Luhn sum is one bytes.translate + sum().
_PLAIN = bytes.maketrans(_DIGITS, bytes(range(10)))
_DOUBLED = bytes.maketrans(_DIGITS, bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


class PinSpaceError(ValueError):
    """A batch would put too many cards in one PIN space (see check_density)."""


def _check_digit_unchecked(payload: str) -> str:
    """Luhn check digit for an ASCII-digit payload. Performs no validation."""
    raw = payload.encode("ascii")
    # Once the check digit is appended, the payload's rightmost digit is
    # second from the right, so it is doubled.
    total = sum(raw[-1::-2].translate(_DOUBLED)) + sum(raw[-2::-2].translate(_PLAIN))
    return "0123456789"[-total % 10]


def luhn_check_digit(digits: str) -> str:
    """Return the Luhn (mod 10) check digit to append to ``digits``.

    Raises ValueError unless ``digits`` is a non-empty string of 0-9.
    """
    if not is_ascii_digits(digits):
        raise ValueError("Luhn payload must be a non-empty string of digits 0-9")
    return _check_digit_unchecked(digits)


def luhn_valid(number: str) -> bool:
    """True when ``number`` (check digit last) passes the Luhn mod 10 check.

    Decision: a valid number has at least two digits (some payload plus the
    check digit) and only 0-9. Anything else returns False; it never raises.
    """
    if not isinstance(number, str) or len(number) < 2 or not is_ascii_digits(number):
        return False
    raw = number.encode("ascii")
    total = sum(raw[-1::-2].translate(_PLAIN)) + sum(raw[-2::-2].translate(_DOUBLED))
    return total % 10 == 0


@dataclass(frozen=True)
class PinFormat:
    """Shape of the PINs in one card batch.

    ``length`` counts every digit, including ``prefix`` and the trailing Luhn
    check digit. The digits in between are random.
    """

    length: int
    prefix: str = ""

    def __post_init__(self) -> None:
        if (
            isinstance(self.length, bool)
            or not isinstance(self.length, int)
            or not MIN_PIN_LENGTH <= self.length <= MAX_PIN_LENGTH
        ):
            raise ValueError(
                f"PIN length must be a whole number from {MIN_PIN_LENGTH} to "
                f"{MAX_PIN_LENGTH}, got {self.length!r}"
            )
        if not isinstance(self.prefix, str) or (self.prefix and not is_ascii_digits(self.prefix)):
            raise ValueError(f"PIN prefix must contain only digits 0-9, got {self.prefix!r}")
        if self.random_digits < MIN_RANDOM_DIGITS:
            raise ValueError(
                f"PIN length {self.length} with prefix {self.prefix!r} leaves "
                f"{self.random_digits} random digits; at least {MIN_RANDOM_DIGITS} "
                "are required (use a longer PIN or a shorter prefix)"
            )

    @property
    def random_digits(self) -> int:
        """Number of random digits: length minus prefix minus check digit."""
        return self.length - len(self.prefix) - 1

    @property
    def space(self) -> int:
        """Number of distinct valid PINs in this format (10 ** random digits)."""
        return int(10**self.random_digits)  # int() only narrows the type for mypy


def _density_limit(max_density: float) -> Fraction:
    """Turn ``max_density`` into an exact fraction of its decimal value.

    Decision: compare against the decimal that was written (1e-4 means
    exactly 1/10000), not its binary float approximation. This keeps the
    boundary exact: 100 cards in a space of 10**6 are allowed, 101 are not.
    """
    return Fraction(str(max_density))


def _suggest_length(fmt: PinFormat, new: int, limit: Fraction) -> int | None:
    """Shortest PIN length above ``fmt.length`` that holds ``new`` cards within ``limit``.

    Returns None when even the longest allowed PIN would be too dense.
    """
    for length in range(fmt.length + 1, MAX_PIN_LENGTH + 1):
        if new <= limit * 10 ** (length - len(fmt.prefix) - 1):
            return length
    return None


def check_density(fmt: PinFormat, existing: int, new: int, max_density: float) -> None:
    """Raise PinSpaceError if issuing ``new`` PINs would make ``fmt`` too dense.

    ``existing`` is the number of cards already issued with the same length
    and prefix. The check fails when ``(existing + new) / fmt.space`` is
    greater than ``max_density``. Reaching the limit exactly is allowed. The
    error message gives the density that would result and suggests a longer
    PIN. A longer PIN is a different space with no existing cards, so the
    suggestion is based on ``new`` alone.

    Raises ValueError for negative counts or a ``max_density`` outside (0, 1].
    """
    for name, value in (("existing", existing), ("new", new)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    if (
        isinstance(max_density, bool)
        or not isinstance(max_density, (int, float))
        or not math.isfinite(max_density)
        or not 0 < max_density <= 1
    ):
        raise ValueError(f"max_density must be a number in (0, 1], got {max_density!r}")
    limit = _density_limit(max_density)
    total = existing + new
    if total <= limit * fmt.space:
        return
    suggestion = _suggest_length(fmt, new, limit)
    if suggestion is not None:
        advice = f"use a longer PIN ({suggestion} digits or more)"
    elif fmt.prefix:
        advice = "use a shorter prefix or a smaller batch"
    else:
        advice = "use a smaller batch"
    raise PinSpaceError(
        f"issuing {new} PINs of length {fmt.length} with prefix {fmt.prefix!r} "
        f"({existing} already issued) would reach a density of {total / fmt.space:.2e} "
        f"({total} of {fmt.space} possible PINs), above the maximum {max_density:g}; {advice}"
    )


def generate_pins(fmt: PinFormat, count: int, rng: random.Random | None = None) -> Iterator[str]:
    """Return an iterator over ``count`` distinct new PINs in format ``fmt``.

    Each PIN is ``fmt.prefix``, then ``fmt.random_digits`` uniformly random
    digits, then the Luhn check digit over everything before it.

    Decisions:
    - Randomness comes from ``secrets.SystemRandom()`` (the OS CSPRNG) unless
      a tests-only ``rng`` is passed. Each PIN's random part is a uniform
      integer below ``10**k``, zero-padded, never a digit-by-digit draw.
      Several such integers come from one ``rng.randrange`` call (see
      _uniform_values).
    - PINs are distinct within one call. A draw already seen is simply
      drawn again (rejection sampling). The set holds the random integers,
      not the strings. They correspond one-to-one, because the prefix is
      fixed and the check digit is a function of the rest, and integers use
      less memory. Uniqueness against cards already in the database is the
      caller's job (a unique hash constraint). ``check_density`` keeps such
      collisions rare.
    - Arguments are checked now, not on first ``next()``. A ``count``
      larger than the space raises PinSpaceError, because it could never
      finish.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative whole number, got {count!r}")
    if count > fmt.space:
        raise PinSpaceError(
            f"cannot generate {count} distinct PINs: length {fmt.length} with prefix "
            f"{fmt.prefix!r} has only {fmt.space}; use a longer PIN"
        )
    source = rng if rng is not None else secrets.SystemRandom()
    return _generate(fmt.prefix, fmt.random_digits, count, source)


_DIGITS_PER_DRAW = 77
"""About 256 bits. Each CSPRNG call yields this many random digits (see _uniform_values)."""


def _uniform_values(source: random.Random, width: int) -> Iterator[int]:
    """Yield independent uniform integers in ``[0, 10**width)`` for as long as asked.

    Decision: one ``randrange(10 ** (width * m))`` per ``m`` values, then split
    it into ``m`` base-``10**width`` digits. A uniform number below
    ``bound ** m`` has independent, uniform base-``bound`` digits, so the
    result is exactly as uniform as ``m`` separate ``randrange(10**width)``
    calls. It costs one OS-entropy read instead of ``m``. For 12-digit PINs
    this makes generation about 3x faster.
    """
    bound = 10**width
    per_draw = max(1, _DIGITS_PER_DRAW // width)
    block_bound = bound**per_draw
    randrange = source.randrange
    while True:
        block = randrange(block_bound)
        for _ in range(per_draw):
            block, value = divmod(block, bound)
            yield value


def _generate(prefix: str, width: int, count: int, source: random.Random) -> Iterator[str]:
    """Yield ``count`` distinct PINs. This is the hot loop behind generate_pins."""
    seen: set[int] = set()
    if count == 0:
        return
    for value in _uniform_values(source, width):
        if value in seen:
            continue
        seen.add(value)
        payload = prefix + str(value).zfill(width)
        yield payload + _check_digit_unchecked(payload)
        if len(seen) == count:
            return


def _require_key(key: bytes) -> None:
    """Reject a missing server key.

    Decision: an empty key would turn the HMAC into a plain hash that anyone
    can brute-force offline, so it is a configuration error. Use 32 random
    bytes.
    """
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("PIN hashing key must be non-empty bytes")


def pin_hash(key: bytes, pin: str) -> str:
    """HMAC-SHA256 of ``pin`` (UTF-8) under the server ``key``, as lowercase hex."""
    _require_key(key)
    return hmac.new(key, pin.encode("utf-8"), hashlib.sha256).hexdigest()


def make_pin_hasher(key: bytes) -> Callable[[str], str]:
    """Return a function equivalent to ``lambda pin: pin_hash(key, pin)``, but faster.

    The keyed HMAC state is built once. Each call ``.copy()``s it, which saves
    the two key-block compressions per PIN. That matters when hashing a
    million-card batch. The base object is never updated, so the hasher may
    be shared.
    """
    _require_key(key)
    base = hmac.new(key, digestmod=hashlib.sha256)

    def hasher(pin: str) -> str:
        mac = base.copy()
        mac.update(pin.encode("utf-8"))
        return mac.hexdigest()

    return hasher


def looks_like_pin(
    candidate: str, fmt_lengths: Container[int] = range(MIN_PIN_LENGTH, MAX_PIN_LENGTH + 1)
) -> bool:
    """Cheap check that ``candidate`` could be a PIN: digits 0-9, allowed length, Luhn valid.

    Use it to reject garbage and typos before any hash or database lookup.
    It never raises.
    """
    return isinstance(candidate, str) and len(candidate) in fmt_lengths and luhn_valid(candidate)
