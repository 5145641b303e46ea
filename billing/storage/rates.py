"""Longest-prefix rate lookup, shared by the server's authorization and ``prepaidctl rates lookup``.

One query: every prefix of the (already normalized) number is a candidate, the unique index on
``(rate_group_id, prefix)`` finds them, and the longest one wins. Prefixes are at most 32 digits
(the column width), so the candidate list is short whatever the caller sends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.orm import Session

from billing.rating import Rate
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
    if not number or not (number.isascii() and number.isdigit()):
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
    if not number or not (number.isascii() and number.isdigit()):
        return dict.fromkeys(_SLOTS, "-")
    candidates = candidate_prefixes(number)
    candidates += [candidates[-1]] * (MAX_PREFIX_LENGTH - len(candidates))
    return dict(zip(_SLOTS, candidates, strict=True))


#: The server's form of the lookup, built once so its compiled SQL is cached. Parameters:
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
    if not number or not (number.isascii() and number.isdigit()):
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
