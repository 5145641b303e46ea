"""Card expiry: the daily run that closes cards past their validity and takes back breakage.

:func:`run_expiry` does, as of ``now`` (a naive UTC datetime; nothing here reads the clock):

1. Cards ``active``, ``inactive`` or ``exhausted`` whose ``expires_at <= now`` become ``expired``
   (locked cards too: locking is a flag, the state still moves).
2. ``expired`` cards past their grace period (``now >= expires_at + grace_days``) with a non-zero
   balance forfeit it: the balance becomes 0 and a ledger entry of kind ``expiry`` records
   ``-balance`` (breakage). A negative balance (calls that ran past their grant) is written off
   the same way, so every closed card ends at exactly 0 and the ledger still adds up.
   Cards with live calls (``authorized``/``started``) are skipped: a Stop may still bill them;
   the next run takes them.

Safe to run while the server runs and idempotent: it works in chunks of cards, one transaction
each, and locks the chunk's rows (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions
are ``BEGIN IMMEDIATE`` and already serialize) before re-reading what it changes, so a card the
server is billing at that moment is either billed first or forfeited first, never half of each.
A second run finds nothing left to do. Cards whose validity runs from first use and that were
never used have no ``expires_at`` and never expire by validity.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import DateTime, String, Table, func, insert, literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from billing.domain import CardState
from billing.money import DEFAULT_PLACES, ZERO, round_money
from billing.storage.database import Database
from billing.storage.models import Card, LedgerEntry, LiveSession

EXPIRABLE_STATES = (CardState.ACTIVE.value, CardState.INACTIVE.value, CardState.EXHAUSTED.value)
OPEN_SESSION_STATES = ("authorized", "started")
CHUNK_SIZE = 500  # cards per transaction; also below SQLite's 999 bind parameters per IN list
FORFEIT_NOTE = "balance forfeited at the end of the grace period"


@dataclass(frozen=True, slots=True)
class ExpiryResult:
    expired: int  # cards that became expired
    forfeited: int  # cards whose balance was forfeited
    forfeited_amounts: tuple[tuple[str, Decimal], ...]  # (currency, amount), by currency
    skipped_live: int = 0  # cards past grace left for the next run: they have live calls


def run_expiry(
    db: Database, now: datetime, places: int = DEFAULT_PLACES, chunk_size: int = CHUNK_SIZE
) -> ExpiryResult:
    """Expire cards past validity, then forfeit balances past grace (see the module doc)."""
    if chunk_size < 1 or chunk_size > 900:
        raise ValueError("chunk_size must be between 1 and 900")
    expired = _expire(db, now, chunk_size)
    forfeited, amounts, skipped = _forfeit(db, now, places, chunk_size)
    return ExpiryResult(
        expired=expired,
        forfeited=forfeited,
        forfeited_amounts=tuple(sorted(amounts.items())),
        skipped_live=skipped,
    )


def _expire(db: Database, now: datetime, chunk_size: int) -> int:
    total = 0
    last_id = 0
    while True:
        with db.transaction() as s:
            ids = s.scalars(
                select(Card.id)
                .where(Card.state.in_(EXPIRABLE_STATES))
                .where(Card.expires_at <= now)
                .where(Card.id > last_id)
                .order_by(Card.id)
                .limit(chunk_size)
                .with_for_update()
            ).all()
            if not ids:
                return total
            last_id = ids[-1]
            result = s.execute(
                update(Card)
                .where(Card.id.in_(ids))
                .where(Card.state.in_(EXPIRABLE_STATES))
                .where(Card.expires_at <= now)
                .values(state=CardState.EXPIRED.value)
                .execution_options(synchronize_session=False)
            )
            total += int(getattr(result, "rowcount", 0) or 0)


def _forfeit(
    db: Database, now: datetime, places: int, chunk_size: int
) -> tuple[int, dict[str, Decimal], int]:
    forfeited = 0
    skipped = 0
    amounts: dict[str, Decimal] = {}
    with db.transaction() as s:
        # Grace periods are per card but take few distinct values; one indexed range query each
        # keeps the date arithmetic in Python, the same on SQLite and PostgreSQL.
        graces = sorted(
            s.scalars(
                select(Card.grace_days)
                .where(Card.state == CardState.EXPIRED.value)
                .where(Card.balance != 0)
                .distinct()
            ).all()
        )
    for grace in graces:
        cutoff = now - timedelta(days=int(grace))
        last_id = 0
        while True:
            with db.transaction() as s:
                due = (
                    (Card.state == CardState.EXPIRED.value)
                    & (Card.grace_days == grace)
                    & (Card.expires_at <= cutoff)
                    & (Card.balance != 0)
                )
                ids = s.scalars(
                    select(Card.id)
                    .where(due)
                    .where(Card.id > last_id)
                    .order_by(Card.id)
                    .limit(chunk_size)
                    .with_for_update()
                ).all()
                if not ids:
                    break
                last_id = ids[-1]
                busy = set(
                    s.scalars(
                        select(LiveSession.card_id)
                        .where(LiveSession.card_id.in_(ids))
                        .where(LiveSession.state.in_(OPEN_SESSION_STATES))
                    ).all()
                )
                skipped += len(busy)
                chosen = [i for i in ids if i not in busy]
                if not chosen:
                    continue
                n, by_currency = _forfeit_chunk(s, chosen, due, now, places)
                forfeited += n
                for currency, amount in by_currency.items():
                    amounts[currency] = round_money(amounts.get(currency, ZERO) + amount, places)
    return forfeited, amounts, skipped


def _forfeit_chunk(
    s: Session, ids: list[int], due: ColumnElement[bool], now: datetime, places: int
) -> tuple[int, dict[str, Decimal]]:
    """Forfeit the balances of the (locked) cards ``ids``: ledger entries, then balance 0."""
    chosen = Card.id.in_(ids) & due
    by_currency = {
        currency: round_money(Decimal(str(total)), places)
        for currency, total in s.execute(
            select(Card.currency, func.sum(Card.balance)).where(chosen).group_by(Card.currency)
        )
    }
    ledger = LedgerEntry.__table__
    assert isinstance(ledger, Table)
    s.execute(
        insert(ledger).from_select(
            ["card_id", "kind", "amount", "balance_after", "note", "created_at"],
            select(
                Card.id,
                literal("expiry", String()),
                -Card.balance,
                literal(round_money(ZERO, places)),
                literal(FORFEIT_NOTE, String()),
                literal(now, DateTime()),
            ).where(chosen),
        )
    )
    result = s.execute(
        update(Card)
        .where(chosen)
        .values(balance=round_money(ZERO, places))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0), by_currency
