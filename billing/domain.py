"""The card domain: types, states, and the authorization decision.

Everything here is pure: values in, a decision out. The storage layer loads the snapshots, calls
:func:`decide` inside the transaction that holds the card, and persists what it returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from billing.money import DEFAULT_PLACES, ZERO, round_money
from billing.rating import Rate, cost, max_seconds


class CardType(enum.StrEnum):
    STANDARD = "standard"  # fixed value, debited per call
    RECHARGEABLE = "rechargeable"  # fixed value that can be topped up
    UNLIMITED = "unlimited"  # time-based validity; calls are recorded but not debited
    DISPOSABLE = "disposable"  # retired after its first completed call


class CardState(enum.StrEnum):
    INACTIVE = "inactive"
    ACTIVE = "active"
    EXPIRED = "expired"  # past validity; balance kept during the grace period
    EXHAUSTED = "exhausted"  # balance used up (standard, disposable)
    RETIRED = "retired"  # disposable card after its call, or a card whose balance moved away


class ActivationMode(enum.StrEnum):
    MANUAL = "manual"
    FIRST_USE = "first-use"


class RejectReason(enum.StrEnum):
    """Why an Access-Request is refused. Vendor profiles map these to return codes."""

    UNKNOWN_ACCOUNT = "unknown-account"  # no card for this PIN or ANI
    INVALID_PASSWORD = "invalid-password"  # noqa: S105 - a reason code; card known, PIN wrong
    INVALID_CARD_NUMBER = "invalid-card-number"  # card number unknown
    IN_USE = "in-use"  # Max Calls reached
    ZERO_BALANCE = "zero-balance"
    INSUFFICIENT_BALANCE = "insufficient-balance"  # some money, not one increment's worth
    EXPIRED = "expired"
    DENIED = "denied"  # locked, inactive, retired, exhausted
    BLOCKED_DESTINATION = "blocked-destination"  # no rate for the dialled number
    RETRIES_EXCEEDED = "retries-exceeded"  # the source is locked out after wrong PINs
    MALFORMED = "malformed-request"  # missing destination, unsupported auth scheme


REJECT_MESSAGES: dict[RejectReason, str] = {
    RejectReason.UNKNOWN_ACCOUNT: "Invalid account",
    RejectReason.INVALID_PASSWORD: "Invalid PIN",
    RejectReason.INVALID_CARD_NUMBER: "Invalid card number",
    RejectReason.IN_USE: "Card in use",
    RejectReason.ZERO_BALANCE: "Zero balance",
    RejectReason.INSUFFICIENT_BALANCE: "Insufficient balance",
    RejectReason.EXPIRED: "Card expired",
    RejectReason.DENIED: "Card not usable",
    RejectReason.BLOCKED_DESTINATION: "Destination not allowed",
    RejectReason.RETRIES_EXCEEDED: "Too many attempts, try later",
    RejectReason.MALFORMED: "Request not understood",
}


@dataclass(frozen=True, slots=True)
class CardSnapshot:
    """What the decision needs to know about a card, read inside the card's transaction."""

    card_id: int
    serial: str
    card_type: CardType
    state: CardState
    locked: bool
    balance: Decimal
    max_calls: int
    activation_mode: ActivationMode
    validity_days: int | None
    expires_at: datetime | None  # set once validity started, or an absolute expiry
    first_used_at: datetime | None
    currency: str = "USD"


@dataclass(frozen=True, slots=True)
class Limits:
    max_session_seconds: int = 10800
    places: int = DEFAULT_PLACES


@dataclass(frozen=True, slots=True)
class Grant:
    """An accepted call: how long it may last and what is reserved for it."""

    seconds: int
    reserved_amount: Decimal
    available_amount: Decimal  # what the card could spend before this call
    rate: Rate


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RejectReason


Decision = Grant | Refusal


def effective_expiry(card: CardSnapshot, now: datetime) -> datetime | None:
    """When the card stops being usable if a call started now.

    Validity runs from first use: a card never used yet would start it with this call.
    The earlier of that and an absolute expiry wins.
    """
    if card.first_used_at is None and card.validity_days:
        from_first_use = now + timedelta(days=card.validity_days)
        if card.expires_at is None or from_first_use < card.expires_at:
            return from_first_use
    return card.expires_at


def decide(
    card: CardSnapshot,
    rate: Rate | None,
    live_calls: int,
    reserved_by_others: Decimal,
    now: datetime,
    limits: Limits,
) -> Decision:
    """Authorize one call on one card.

    ``live_calls`` and ``reserved_by_others`` describe the card's other open calls (granted and
    not yet ended, reservations not timed out). The grant reserves cost(seconds) so that
    concurrent calls can never spend the same money.
    """
    if card.locked:
        return Refusal(RejectReason.DENIED)
    if card.state == CardState.EXPIRED:
        return Refusal(RejectReason.EXPIRED)
    if card.state == CardState.INACTIVE and card.activation_mode != ActivationMode.FIRST_USE:
        return Refusal(RejectReason.DENIED)
    if card.state in (CardState.RETIRED, CardState.EXHAUSTED):
        return Refusal(RejectReason.DENIED)
    expiry = effective_expiry(card, now)
    if expiry is not None and expiry <= now:
        return Refusal(RejectReason.EXPIRED)
    if live_calls >= card.max_calls:
        return Refusal(RejectReason.IN_USE)
    if rate is None:
        return Refusal(RejectReason.BLOCKED_DESTINATION)

    limit = limits.max_session_seconds
    if expiry is not None:
        limit = min(limit, int((expiry - now).total_seconds()))
    if limit <= 0:
        return Refusal(RejectReason.EXPIRED)

    if card.card_type == CardType.UNLIMITED:
        return Grant(limit, round_money(ZERO, limits.places), card.balance, rate)

    available = card.balance - reserved_by_others
    seconds = max_seconds(rate, available, limit, limits.places)
    if seconds <= 0:
        if available <= 0:
            return Refusal(RejectReason.ZERO_BALANCE)
        return Refusal(RejectReason.INSUFFICIENT_BALANCE)
    return Grant(seconds, cost(rate, seconds, limits.places), available, rate)
