"""Longest-prefix rate lookup.

The server's authorizations look rates up in memory (:class:`RateCache`, one copy of each rate
group, checked against its version). ``prepaidctl rates lookup`` and the accounting of a call
never authorized here ask the database: one query, every prefix of the (already normalized)
number a candidate, the unique index on ``(rate_group_id, prefix)`` finds them, and the
longest one wins. Prefixes are at most 32 digits (the column width), so the candidate list is
short whatever the caller sends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from billing.numbers import is_ascii_digits
from billing.rating import Rate
from billing.storage.database import hot
from billing.storage.models import RateRow

MAX_PREFIX_LENGTH = 32
"""The width of ``rates.prefix``; no stored prefix is longer."""


def candidate_prefixes(number: str) -> list[str]:
    """Every non-empty prefix of ``number``, longest first (at most 32 of them)."""
    return [number[:n] for n in range(min(len(number), MAX_PREFIX_LENGTH), 0, -1)]


def find_rate(session: Session, rate_group_id: int, number: str) -> RateRow | None:
    """The rate of ``rate_group_id`` whose prefix is the longest prefix of ``number``, as a
    stored row (the same query as :func:`rate_for`).

    ``number`` must already be normalized (digits only, international form); an empty or
    non-digit number matches nothing.
    """
    if not is_ascii_digits(number):
        return None
    params = {"rate_group": rate_group_id, **prefix_params(number)}
    return session.scalars(select(RateRow).from_statement(RATE_BY_PREFIX), params).first()


_rates = RateRow.__table__
_SLOTS = [f"prefix_{n}" for n in range(MAX_PREFIX_LENGTH)]


def prefix_params(number: str) -> dict[str, str]:
    """The bound values of :data:`RATE_BY_PREFIX`'s fixed list of candidate slots.

    The list has :data:`MAX_PREFIX_LENGTH` slots whatever the number, so the statement is one
    cached compiled SQL (an expanding ``IN`` is re-rendered at every execution). Slots beyond the
    number's own prefixes repeat its shortest one; a number that is not digits fills them with
    ``"-"``, which no stored prefix is.
    """
    if not is_ascii_digits(number):
        return dict.fromkeys(_SLOTS, "-")
    candidates = candidate_prefixes(number)
    candidates += [candidates[-1]] * (MAX_PREFIX_LENGTH - len(candidates))
    return dict(zip(_SLOTS, candidates, strict=True))


#: The lookup in the database, built once so its compiled SQL is cached. Parameters:
#: ``rate_group`` and :func:`prefix_params`.
RATE_BY_PREFIX = (
    select(_rates)
    .where(
        _rates.c.rate_group_id == bindparam("rate_group"),
        _rates.c.prefix.in_([bindparam(slot) for slot in _SLOTS]),
    )
    .order_by(func.length(_rates.c.prefix).desc())
    .limit(1)
)


def rate_for(conn: Connection | Session, rate_group_id: int, number: str) -> Rate | None:
    """The same longest-prefix lookup on a Core connection, as a pure :class:`Rate`."""
    if not is_ascii_digits(number):
        return None
    params = {"rate_group": rate_group_id, **prefix_params(number)}
    row = conn.execute(RATE_BY_PREFIX, params).first()
    return rate_from_row(row) if row is not None else None


def rate_from_row(row: Any) -> Rate:
    """The pure :class:`~billing.rating.Rate` of a stored rate (ORM object or result row)."""
    return Rate(
        prefix=row.prefix,
        price_per_minute=row.price_per_minute,
        connection_fee=row.connection_fee,
        first_increment=row.first_increment,
        next_increment=row.next_increment,
        grace_seconds=row.grace_seconds,
        description=row.description,
    )


_RATES_OF_GROUP = hot(select(_rates).where(_rates.c.rate_group_id == bindparam("rate_group")))


class RateCache:
    """Each rate group's rates in memory, for the server's authorizations.

    A group's rates are good while the group's ``rates_version`` (changed by a trigger with
    every change to its rates, revision 0005) is the one they were loaded at; the caller reads
    the version with the card, in its transaction, and a newer one loads the group again. So a
    call is never rated at a price the group no longer has, and the longest-prefix search is a
    few dictionary look-ups instead of a statement (50,000 rates take about 10 MB).
    """

    def __init__(self) -> None:
        self._groups: dict[int, tuple[int, dict[str, Rate]]] = {}

    def rate(self, conn: Connection, rate_group_id: int, version: int, number: str) -> Rate | None:
        """The rate of the longest prefix of ``number`` in the group, as of ``version``."""
        if not is_ascii_digits(number):
            return None
        rates = self._rates(conn, rate_group_id, version)
        for prefix in candidate_prefixes(number):
            rate = rates.get(prefix)
            if rate is not None:
                return rate
        return None

    def _rates(self, conn: Connection, rate_group_id: int, version: int) -> dict[str, Rate]:
        cached = self._groups.get(rate_group_id)
        if cached is not None and cached[0] >= version:
            return cached[1]
        rows = conn.execute(_RATES_OF_GROUP, {"rate_group": rate_group_id})
        rates = {row.prefix: rate_from_row(row) for row in rows}
        # Threads may load a group at once: each stores a whole, consistent set.
        self._groups[rate_group_id] = (version, rates)
        return rates
