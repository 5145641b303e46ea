"""Rating: what a call costs and how long a balance lets it last.

Pure functions of a :class:`Rate` and numbers; no I/O, no clock.

billed(t) = 0 if t <= grace, else first + ceil(max(0, t - first) / next) * next
cost(t)   = 0 if t <= grace, else connection_fee + price_per_minute * billed(t) / 60

``cost`` is rounded once, by :func:`billing.money.round_money`. ``max_seconds`` is the largest
whole number of seconds t with cost(t) <= available; because cost is a step function that only
rises at the end of an increment, that t is always at an increment boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from billing.money import DEFAULT_PLACES, ZERO, exact_mul_div, round_money


@dataclass(frozen=True, slots=True)
class Rate:
    """The price of a destination prefix in a rate group, fixed for a call at authorization."""

    prefix: str
    price_per_minute: Decimal
    connection_fee: Decimal = ZERO
    first_increment: int = 60
    next_increment: int = 60
    grace_seconds: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.prefix.isdigit():
            raise ValueError(f"prefix must be digits: {self.prefix!r}")
        if self.price_per_minute < 0 or self.connection_fee < 0:
            raise ValueError("price and connection fee must not be negative")
        if self.first_increment < 0:
            raise ValueError("first_increment must be >= 0")
        if self.next_increment < 1:
            raise ValueError("next_increment must be >= 1")
        if self.grace_seconds < 0:
            raise ValueError("grace_seconds must be >= 0")

    @property
    def is_free(self) -> bool:
        return self.price_per_minute == 0 and self.connection_fee == 0


def billed_seconds(rate: Rate, seconds: int) -> int:
    """Seconds charged for a call of ``seconds`` (increments applied, grace honoured)."""
    if seconds < 0:
        raise ValueError("duration must be >= 0")
    if seconds <= rate.grace_seconds or seconds == 0:
        return 0
    over = max(0, seconds - rate.first_increment)
    steps = -(-over // rate.next_increment)  # ceil for non-negative ints
    return rate.first_increment + steps * rate.next_increment


def cost(rate: Rate, seconds: int, places: int = DEFAULT_PLACES) -> Decimal:
    """The rounded price of a call lasting ``seconds``."""
    billed = billed_seconds(rate, seconds)
    if billed == 0:
        return round_money(ZERO, places)
    exact = rate.connection_fee + exact_mul_div(rate.price_per_minute, billed, 60)
    return round_money(exact, places)


def _boundary(rate: Rate, k: int) -> int:
    """The k-th increment boundary: the longest call billed as first + k * next seconds."""
    return rate.first_increment + k * rate.next_increment


def max_seconds(rate: Rate, available: Decimal, limit: int, places: int = DEFAULT_PLACES) -> int:
    """The largest t <= ``limit`` with cost(t) <= ``available``; 0 if not even one increment.

    ``limit`` bounds the answer for free rates and keeps the search finite.
    """
    if limit <= 0:
        return 0
    if rate.is_free:
        return limit
    smallest = max(1, rate.first_increment, rate.grace_seconds + 1)
    if cost(rate, smallest, places) > available:
        # Not one increment is affordable; the grace period alone is not a call worth granting.
        return 0
    if rate.price_per_minute == 0:
        return limit
    # Estimate k from the exact inverse, then correct for rounding by walking increments.
    budget = available - rate.connection_fee
    k = int(exact_mul_div(budget, 60, rate.price_per_minute) - rate.first_increment) // (
        rate.next_increment
    )
    k = max(k, 0)
    while k > 0 and cost(rate, _boundary(rate, k), places) > available:
        k -= 1
    while cost(rate, _boundary(rate, k + 1), places) <= available and _boundary(rate, k) < limit:
        k += 1
    best = _boundary(rate, k)
    if best < smallest:
        best = smallest
    return min(best, limit)
