"""Translation between RADIUS requests and neutral billing calls, and back.

The only place (with the codec and profiles) that knows RADIUS attribute names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from billing.calls import (
    Accepted,
    AcctEvent,
    AcctStatus,
    AuthRequest,
    AuthResult,
    utc_from_epoch,
)
from billing.domain import REJECT_MESSAGES, RejectReason
from billing.numbers import NumberRules, normalize_number
from radiusd.codec import ACCESS_ACCEPT, ACCESS_REJECT, Reply, Request
from radiusd.profiles import Profile, cisco_value

CLASS_PREFIX = b"paaa:"

#: The widths of what calls and CDRs store: numbers (normalized) and the NAS's session
#: identifiers. An Access-Request with anything wider is refused as malformed, the same on every
#: database; accounting, which must never be refused, keeps the first characters.
NUMBER_WIDTH = 32
SESSION_ID_WIDTH = 128

ACCT_STATUS = {
    "Start": AcctStatus.START,
    "Stop": AcctStatus.STOP,
    "Interim-Update": AcctStatus.INTERIM,
    "Alive": AcctStatus.INTERIM,
    "Accounting-On": AcctStatus.ACCOUNTING_ON,
    "Accounting-Off": AcctStatus.ACCOUNTING_OFF,
    1: AcctStatus.START,
    2: AcctStatus.STOP,
    3: AcctStatus.INTERIM,
    7: AcctStatus.ACCOUNTING_ON,
    8: AcctStatus.ACCOUNTING_OFF,
}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _h323(request: Request, name: str) -> str | None:
    value = request.first(name)
    return cisco_value(_text(value)) if value is not None else None


def _number(request: Request, name: str, rules: NumberRules) -> str:
    return normalize_number(_text(request.first(name, "")), rules)


def auth_request(request: Request, nas_id: int, rules: NumberRules) -> AuthRequest:
    return AuthRequest(
        nas_id=nas_id,
        user_name=_text(request.first("User-Name", "")).strip(),
        password=request.password,
        calling_number=_number(request, "Calling-Station-Id", rules),
        called_number=_number(request, "Called-Station-Id", rules),
        acct_session_id=_text(request.first("Acct-Session-Id")) or None,
        conf_id=_h323(request, "h323-conf-id"),
    )


def oversized(call: AuthRequest) -> bool:
    """Whether an Access-Request carries a number or identifier wider than a call can store."""
    return (
        len(call.calling_number) > NUMBER_WIDTH
        or len(call.called_number) > NUMBER_WIDTH
        or len(call.acct_session_id or "") > SESSION_ID_WIDTH
        or len(call.conf_id or "") > SESSION_ID_WIDTH
    )


def _clip(value: str | None, width: int) -> str | None:
    return value[:width] if value else value


def auth_reply(
    result: AuthResult, profile: Profile, places: int, interim_interval: int = 0
) -> Reply:
    """Accept with the grant (and, when configured, the Interim-Update interval), or Reject."""
    if isinstance(result, Accepted):
        attrs: list[tuple[str, Any]] = [
            ("Session-Timeout", result.session_seconds),
            ("Class", CLASS_PREFIX + result.token.encode()),
        ]
        if interim_interval > 0:
            # Progress reports make a lost Stop billable from the last one (RFC 2869 5.16).
            attrs.append(("Acct-Interim-Interval", interim_interval))
        attrs += profile.accept_attributes(
            result.session_seconds, result.available_amount, result.currency, places
        )
        return Reply(ACCESS_ACCEPT, attrs)
    return reject_reply(result.reason, profile)


def reject_reply(reason: RejectReason, profile: Profile) -> Reply:
    attrs: list[tuple[str, Any]] = [("Reply-Message", REJECT_MESSAGES[reason])]
    attrs += profile.reject_attributes(reason)
    return Reply(ACCESS_REJECT, attrs)


def class_token(request: Request) -> str | None:
    for value in request.attrs.get("Class", []):
        raw = value if isinstance(value, bytes) else _text(value).encode()
        if raw.startswith(CLASS_PREFIX):
            return raw[len(CLASS_PREFIX) :].decode("ascii", errors="replace")
    return None


def acct_event(
    request: Request, nas_id: int, arrival: float, rules: NumberRules, profile: Profile
) -> AcctEvent | None:
    """The accounting event, or None for a status type that bills nothing (ACKed as is)."""
    status = ACCT_STATUS.get(request.first("Acct-Status-Type"))
    if status is None:
        return None
    timestamp = request.first("Event-Timestamp")
    if isinstance(timestamp, int) and timestamp > 0:
        event_at = utc_from_epoch(timestamp)
    else:
        delay = request.first("Acct-Delay-Time", 0)
        event_at = utc_from_epoch(arrival) - timedelta(seconds=int(delay or 0))
    session_time = request.first("Acct-Session-Time")
    return AcctEvent(
        nas_id=nas_id,
        status=status,
        event_at=event_at,
        token=class_token(request),
        acct_session_id=_clip(_text(request.first("Acct-Session-Id")), SESSION_ID_WIDTH) or None,
        conf_id=_clip(_h323(request, "h323-conf-id"), SESSION_ID_WIDTH),
        user_name=_text(request.first("User-Name", "")).strip(),
        calling_number=_number(request, "Calling-Station-Id", rules)[:NUMBER_WIDTH],
        called_number=_number(request, "Called-Station-Id", rules)[:NUMBER_WIDTH],
        session_seconds=int(session_time) if session_time is not None else None,
        terminate_cause=_text(request.first("Acct-Terminate-Cause")) or None,
        leg=profile.leg_of(_h323(request, "h323-call-origin")),
    )
