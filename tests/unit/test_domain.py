"""The authorization decision: every refusal, the DESIGN example, caps, and reservations."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain import (
    ActivationMode,
    CardSnapshot,
    CardState,
    CardType,
    Grant,
    Limits,
    Refusal,
    RejectReason,
    decide,
    effective_expiry,
)
from billing.rating import Rate, cost

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC).replace(tzinfo=None)  # naive UTC, as stored
UK = Rate("44", Decimal("0.07"), Decimal("0.05"), 30, 6, 0)
LIMITS = Limits()


def card(**overrides: object) -> CardSnapshot:
    base = CardSnapshot(
        card_id=1,
        serial="100000001",
        card_type=CardType.STANDARD,
        state=CardState.ACTIVE,
        locked=False,
        balance=Decimal("5.00"),
        max_calls=1,
        activation_mode=ActivationMode.MANUAL,
        validity_days=None,
        expires_at=None,
        first_used_at=NOW - timedelta(days=1),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def run(
    c: CardSnapshot,
    rate: Rate | None = UK,
    live_calls: int = 0,
    reserved: Decimal = Decimal(0),
    now: datetime = NOW,
    limits: Limits = LIMITS,
):
    return decide(c, rate, live_calls, reserved, now, limits)


def refused(decision: object, reason: RejectReason) -> bool:
    return isinstance(decision, Refusal) and decision.reason == reason


# -- refusals --------------------------------------------------------------------------------


def test_locked_card_is_denied() -> None:
    assert refused(run(card(locked=True)), RejectReason.DENIED)


def test_inactive_manual_card_is_denied() -> None:
    c = card(state=CardState.INACTIVE, activation_mode=ActivationMode.MANUAL, first_used_at=None)
    assert refused(run(c), RejectReason.DENIED)


def test_inactive_first_use_card_is_granted() -> None:
    c = card(state=CardState.INACTIVE, activation_mode=ActivationMode.FIRST_USE, first_used_at=None)
    decision = run(c)
    assert isinstance(decision, Grant)
    assert decision.seconds == 4242


@pytest.mark.parametrize("state", [CardState.RETIRED, CardState.EXHAUSTED])
def test_retired_and_exhausted_cards_are_denied(state: CardState) -> None:
    assert refused(run(card(state=state)), RejectReason.DENIED)


def test_expired_state_is_expired() -> None:
    assert refused(run(card(state=CardState.EXPIRED)), RejectReason.EXPIRED)


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=-1), timedelta(days=-30)])
def test_expires_at_not_after_now_is_expired(delta: timedelta) -> None:
    assert refused(run(card(expires_at=NOW + delta)), RejectReason.EXPIRED)


def test_less_than_one_second_to_expiry_is_expired() -> None:
    assert refused(run(card(expires_at=NOW + timedelta(milliseconds=500))), RejectReason.EXPIRED)


@pytest.mark.parametrize(("max_calls", "live"), [(1, 1), (2, 2), (2, 3)])
def test_max_calls_reached_is_in_use(max_calls: int, live: int) -> None:
    assert refused(run(card(max_calls=max_calls), live_calls=live), RejectReason.IN_USE)


def test_below_max_calls_is_granted() -> None:
    assert isinstance(run(card(max_calls=2), live_calls=1), Grant)


def test_no_rate_is_blocked_destination() -> None:
    assert refused(run(card(), rate=None), RejectReason.BLOCKED_DESTINATION)


def test_zero_balance() -> None:
    assert refused(run(card(balance=Decimal("0.0000"))), RejectReason.ZERO_BALANCE)


def test_some_balance_below_one_increment_is_insufficient() -> None:
    # the first 30 s increment costs 0.05 + 0.035 = 0.0850
    assert refused(run(card(balance=Decimal("0.0849"))), RejectReason.INSUFFICIENT_BALANCE)
    assert isinstance(run(card(balance=Decimal("0.0850"))), Grant)


# -- grants ----------------------------------------------------------------------------------


def test_design_example_session_timeout_and_reservation() -> None:
    decision = run(card(balance=Decimal("5.00")))
    assert isinstance(decision, Grant)
    assert decision.seconds == 4242
    assert decision.reserved_amount == Decimal("4.9990")
    assert decision.available_amount == Decimal("5.00")
    assert decision.rate == UK


def test_reserved_by_others_reduces_the_grant() -> None:
    decision = run(
        card(balance=Decimal("5.00"), max_calls=2), live_calls=1, reserved=Decimal("2.00")
    )
    assert isinstance(decision, Grant)
    assert decision.available_amount == Decimal("3.00")
    assert decision.reserved_amount <= Decimal("3.00")
    assert decision.seconds < 4242


def test_second_call_cannot_spend_what_the_first_reserved() -> None:
    # 5.00 - 4.9990 leaves 0.0010, far less than one increment (0.0850)
    decision = run(
        card(balance=Decimal("5.00"), max_calls=2), live_calls=1, reserved=Decimal("4.9990")
    )
    assert refused(decision, RejectReason.INSUFFICIENT_BALANCE)


def test_fully_reserved_balance_is_zero_balance() -> None:
    decision = run(
        card(balance=Decimal("5.00"), max_calls=2), live_calls=1, reserved=Decimal("5.00")
    )
    assert refused(decision, RejectReason.ZERO_BALANCE)


def test_grant_is_capped_by_time_left_to_expiry() -> None:
    decision = run(card(expires_at=NOW + timedelta(seconds=600)))
    assert isinstance(decision, Grant)
    assert decision.seconds == 600
    assert decision.reserved_amount == cost(UK, 600)


def test_grant_is_capped_by_max_session_seconds() -> None:
    decision = run(card(balance=Decimal("100.00")), limits=Limits(max_session_seconds=900))
    assert isinstance(decision, Grant)
    assert decision.seconds == 900
    assert decision.reserved_amount == cost(UK, 900)


def test_default_max_session_seconds_is_three_hours() -> None:
    decision = run(card(balance=Decimal("1000.00")))
    assert isinstance(decision, Grant)
    assert decision.seconds == 10800


def test_unlimited_card_gets_the_limit_and_reserves_nothing() -> None:
    c = card(card_type=CardType.UNLIMITED, balance=Decimal("0"))
    decision = run(c, limits=Limits(max_session_seconds=7200))
    assert isinstance(decision, Grant)
    assert decision.seconds == 7200
    assert decision.reserved_amount == Decimal("0.0000")


def test_unlimited_card_is_capped_by_expiry() -> None:
    c = card(card_type=CardType.UNLIMITED, expires_at=NOW + timedelta(seconds=120))
    decision = run(c)
    assert isinstance(decision, Grant)
    assert decision.seconds == 120
    assert decision.reserved_amount == 0


def test_unlimited_card_still_honours_max_calls_and_rates() -> None:
    c = card(card_type=CardType.UNLIMITED)
    assert refused(run(c, live_calls=1), RejectReason.IN_USE)
    assert refused(run(c, rate=None), RejectReason.BLOCKED_DESTINATION)


# -- effective_expiry ------------------------------------------------------------------------


def test_never_used_card_validity_runs_from_now() -> None:
    c = card(first_used_at=None, validity_days=30, expires_at=None)
    assert effective_expiry(c, NOW) == NOW + timedelta(days=30)


def test_never_used_card_earlier_absolute_expiry_wins() -> None:
    absolute = NOW + timedelta(days=10)
    c = card(first_used_at=None, validity_days=30, expires_at=absolute)
    assert effective_expiry(c, NOW) == absolute


def test_never_used_card_later_absolute_expiry_loses() -> None:
    c = card(first_used_at=None, validity_days=30, expires_at=NOW + timedelta(days=90))
    assert effective_expiry(c, NOW) == NOW + timedelta(days=30)


def test_used_card_keeps_its_stored_expiry() -> None:
    stored = NOW + timedelta(days=3)
    c = card(first_used_at=NOW - timedelta(days=27), validity_days=30, expires_at=stored)
    assert effective_expiry(c, NOW) == stored


def test_card_without_validity_or_expiry_never_expires() -> None:
    assert effective_expiry(card(first_used_at=None, validity_days=None), NOW) is None


def test_never_used_card_grant_is_capped_by_validity_from_now() -> None:
    c = card(
        state=CardState.INACTIVE,
        activation_mode=ActivationMode.FIRST_USE,
        first_used_at=None,
        validity_days=1,
        balance=Decimal("1000.00"),
    )
    decision = run(c, limits=Limits(max_session_seconds=10 * 86400))
    assert isinstance(decision, Grant)
    assert decision.seconds == 86400


# -- property: concurrent grants never reserve more than the balance --------------------------

rates = st.builds(
    Rate,
    prefix=st.just("1"),
    price_per_minute=st.decimals(min_value=0, max_value=5, places=4),
    connection_fee=st.decimals(min_value=0, max_value=1, places=4),
    first_increment=st.integers(0, 120),
    next_increment=st.integers(1, 120),
    grace_seconds=st.integers(0, 30),
)


@settings(max_examples=200, deadline=None)
@given(
    balance=st.decimals(min_value=0, max_value=200, places=4),
    rate=rates,
    calls=st.integers(1, 8),
    max_session=st.integers(1, 20000),
)
def test_sequential_grants_never_reserve_more_than_the_balance(
    balance: Decimal, rate: Rate, calls: int, max_session: int
) -> None:
    c = card(balance=balance, max_calls=calls)
    limits = Limits(max_session_seconds=max_session)
    reserved = Decimal(0)
    for live in range(calls):
        decision = decide(c, rate, live, reserved, NOW, limits)
        if isinstance(decision, Refusal):
            assert decision.reason in (RejectReason.ZERO_BALANCE, RejectReason.INSUFFICIENT_BALANCE)
            break
        assert 0 < decision.seconds <= max_session
        assert decision.reserved_amount >= 0
        assert decision.reserved_amount == cost(rate, decision.seconds)
        assert decision.available_amount == balance - reserved
        reserved += decision.reserved_amount
        assert reserved <= balance
