"""Vendor profiles: how a kind of NAS wants to be answered.

``generic``: standard RFC attributes only (Session-Timeout, Class, Reply-Message).
``cisco``: adds the Cisco VoIP VSAs of the debit-card application (``h323-credit-time``,
``h323-credit-amount``, ``h323-return-code``, ``h323-billing-model``, ``h323-currency``), each
valued ``name=value`` as Cisco gateways expect; reports two legs per call sharing one
``h323-conf-id``, of which the outgoing (``h323-call-origin = originate``) leg is billed and the
other is kept as a zero-cost leg record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from billing.domain import RejectReason
from billing.money import format_amount

#: The Cisco debit-card return codes (h323-return-code).
CISCO_RETURN_CODES: dict[RejectReason, int] = {
    RejectReason.UNKNOWN_ACCOUNT: 1,
    RejectReason.INVALID_PASSWORD: 2,
    RejectReason.IN_USE: 3,
    RejectReason.ZERO_BALANCE: 4,
    RejectReason.EXPIRED: 5,
    RejectReason.DENIED: 7,
    RejectReason.MALFORMED: 7,
    RejectReason.BLOCKED_DESTINATION: 9,
    RejectReason.RETRIES_EXCEEDED: 10,
    RejectReason.INSUFFICIENT_BALANCE: 12,
    RejectReason.INVALID_CARD_NUMBER: 14,
}


@dataclass(frozen=True)
class Profile:
    name: str
    h323: bool = False
    return_codes: dict[RejectReason, int] = field(default_factory=dict)
    billed_leg_origin: str | None = None  # value of h323-call-origin whose leg is billed

    def accept_attributes(
        self, seconds: int, available: Decimal, currency: str, places: int
    ) -> list[tuple[str, str]]:
        if not self.h323:
            return []
        return [
            ("h323-credit-time", f"h323-credit-time={seconds}"),
            ("h323-credit-amount", f"h323-credit-amount={format_amount(available, places)}"),
            ("h323-return-code", "h323-return-code=0"),
            ("h323-billing-model", "h323-billing-model=1"),  # 1: debit (prepaid)
            ("h323-currency", f"h323-currency={currency}"),
        ]

    def reject_attributes(self, reason: RejectReason) -> list[tuple[str, str]]:
        code = self.return_codes.get(reason)
        if not self.h323 or code is None:
            return []
        return [("h323-return-code", f"h323-return-code={code}")]

    def leg_of(self, call_origin: str | None) -> str:
        """``billed`` or ``other`` for an accounting stream with this h323-call-origin."""
        if self.billed_leg_origin is None or not call_origin:
            return "billed"
        return "billed" if call_origin == self.billed_leg_origin else "other"


PROFILES: dict[str, Profile] = {
    "generic": Profile("generic"),
    "cisco": Profile(
        "cisco", h323=True, return_codes=CISCO_RETURN_CODES, billed_leg_origin="originate"
    ),
}


def cisco_value(raw: str | None) -> str | None:
    """Cisco sends ``h323-conf-id = "h323-conf-id=ABC"``; return ``ABC``."""
    if raw is None:
        return None
    name, sep, value = raw.partition("=")
    return value.strip() if sep and name.startswith("h323-") else raw.strip()
