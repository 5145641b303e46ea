"""Rating and money: the worked example, and properties over random tariffs and balances."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import MoneyError, parse_amount, round_money
from billing.rating import Rate, billed_seconds, cost, max_seconds

UK = Rate("44", Decimal("0.07"), Decimal("0.05"), 30, 6, 0)


def test_design_example_session_timeout_and_cost() -> None:
    assert max_seconds(UK, Decimal("5.00"), limit=10800) == 4242
    assert cost(UK, 4242) == Decimal("4.9990")
    assert cost(UK, 4243) > Decimal("5.00")
    assert billed_seconds(UK, 125) == 126
    assert cost(UK, 125) == Decimal("0.1970")


def test_grace_calls_are_free_and_first_increment_applies() -> None:
    rate = Rate("1", Decimal("0.60"), Decimal("0.10"), 60, 60, grace_seconds=5)
    assert cost(rate, 0) == 0
    assert cost(rate, 5) == 0
    assert billed_seconds(rate, 6) == 60
    assert cost(rate, 6) == Decimal("0.7000")
    assert billed_seconds(rate, 61) == 120


def test_no_grant_when_one_increment_is_unaffordable() -> None:
    assert max_seconds(UK, Decimal("0.08"), limit=10800) == 0  # 30 s cost 0.085
    assert max_seconds(UK, Decimal("0.085"), limit=10800) == 30
    assert max_seconds(UK, Decimal("0"), limit=10800) == 0
    assert max_seconds(UK, Decimal("-1"), limit=10800) == 0


def test_limit_caps_free_and_cheap_rates() -> None:
    free = Rate("800", Decimal("0"), Decimal("0"), 1, 1)
    assert max_seconds(free, Decimal("0"), limit=10800) == 10800
    assert max_seconds(UK, Decimal("1000"), limit=10800) == 10800


def test_money_parsing_refuses_what_it_cannot_store() -> None:
    assert parse_amount("5") == Decimal("5.0000")
    with pytest.raises(MoneyError):
        parse_amount("0.00001")
    with pytest.raises(MoneyError):
        parse_amount("five")
    with pytest.raises(MoneyError):
        parse_amount("NaN")


rates = st.builds(
    Rate,
    prefix=st.just("1"),
    price_per_minute=st.decimals("0.0001", "5", places=4),
    connection_fee=st.decimals("0", "1", places=4),
    first_increment=st.integers(0, 120),
    next_increment=st.integers(1, 60),
    grace_seconds=st.integers(0, 10),
)
balances = st.decimals("0", "200", places=4)


@given(rates, balances)
def test_granted_time_is_affordable_and_maximal(rate: Rate, balance: Decimal) -> None:
    limit = 10**7
    t = max_seconds(rate, balance, limit)
    if t == 0:
        smallest = max(1, rate.first_increment, rate.grace_seconds + 1)
        assert cost(rate, smallest) > balance
        return
    assert cost(rate, t) <= balance
    if t < limit:
        assert cost(rate, t + 1) > balance  # one more second starts an unaffordable increment
        assert billed_seconds(rate, t) == t  # the grant ends on an increment boundary


@given(rates, st.integers(0, 20000), st.integers(0, 20000))
def test_cost_is_monotone_and_rounded_once(rate: Rate, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert cost(rate, lo) <= cost(rate, hi)
    c = cost(rate, hi)
    assert isinstance(c, Decimal)
    assert c == round_money(c)
