"""Neutral call events: what the RADIUS layer hands to billing and what billing answers.

Frozen values with no RADIUS names in them; ``radiusd`` translates packets into these and
decisions back into packets. Times are naive UTC datetimes (the storage convention).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from billing.domain import RejectReason

_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 - storage times are naive UTC


def utc_from_epoch(seconds: float) -> datetime:
    """A naive UTC datetime from an epoch timestamp (the reactor's clock): the same value as
    ``datetime.fromtimestamp(seconds, UTC)`` without its zone, in about half the time (each
    request takes one or two)."""
    return _EPOCH + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Nas:
    """A trusted NAS client as the server knows it."""

    id: int
    name: str
    address: str
    secret: bytes
    profile: str
    require_message_authenticator: str  # auto, yes, no
    message_authenticator_seen: bool


@dataclass(frozen=True, slots=True)
class AuthRequest:
    nas_id: int
    user_name: str
    password: str | None  # decrypted PAP password, None when absent
    calling_number: str  # normalized, "" when absent
    called_number: str  # normalized, "" when absent
    acct_session_id: str | None = None
    conf_id: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    token: str  # goes into Class
    serial: str
    session_seconds: int
    available_amount: Decimal
    currency: str
    auth_method: str


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    serial: str | None = None  # the card, when one was identified


AuthResult = Accepted | Rejected


class AcctStatus(enum.StrEnum):
    START = "start"
    INTERIM = "interim"
    STOP = "stop"
    ACCOUNTING_ON = "accounting-on"
    ACCOUNTING_OFF = "accounting-off"


@dataclass(frozen=True, slots=True)
class AcctEvent:
    nas_id: int
    status: AcctStatus
    event_at: datetime  # Event-Timestamp, else arrival minus Acct-Delay-Time
    token: str | None = None  # from Class
    acct_session_id: str | None = None
    conf_id: str | None = None
    user_name: str = ""
    calling_number: str = ""
    called_number: str = ""
    session_seconds: int | None = None  # Acct-Session-Time
    terminate_cause: str | None = None
    leg: str = "billed"  # "billed", or "other" for the leg a multi-leg profile does not bill


@dataclass(frozen=True, slots=True)
class AcctResult:
    """What happened to an accounting event; the reply is an ACK in every case."""

    outcome: str  # started, updated, billed, duplicate, ignored, unmatched, nas-restart, leg
    serial: str | None = None
    cost: Decimal | None = None
    closed_calls: int = 0
