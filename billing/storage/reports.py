"""The operator's reports: Bind Number Bill, Card Status, Revenue, Liability, Suspicious usage.

(The Phone Card Bill is :meth:`billing.storage.admin.Admin.card_bill`.)

Every figure is aggregated by the database (``GROUP BY``, ``SUM``, ``COUNT``); Python only merges
a few grouped rows and never walks CDRs or cards one by one, so the reports stay fast on millions
of calls. The indexes they rely on: ``cdrs(stopped_at)`` (revenue, distinct callers),
``cdrs(calling_number, started_at)`` (bind bill), ``cdrs(over_grant, stopped_at)`` (calls longer
than granted, migration 0002), ``ledger_entries(kind, created_at)`` (recharges, breakage),
``security_events(created_at)`` (PIN failures) and ``cards(batch_id, state)``; and, on
PostgreSQL, statistics on the day of ``cdrs.stopped_at`` and ``ledger_entries.created_at``
(migration 0003), without which revenue by day is planned for a million groups and not run in
parallel. ``python -m bench.reports`` times every report over a million CDRs.

Money is never added across currencies: every money figure is grouped by currency too. Sums are
rounded once to the currency's places (:func:`billing.money.round_money`); PostgreSQL sums
NUMERIC exactly, and on SQLite, which keeps NUMERIC as binary floating point, the rounding gives
back the exact decimal figure.

Dates (``from_date``, ``to_date``, ``since``) are whole UTC days, inclusive. Revenue counts a call
on the day it stopped (the day it was debited) and a ledger entry on the day it was written.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, String, case, cast, func, literal, select, true
from sqlalchemy.sql.elements import ColumnElement

from billing.money import DEFAULT_PLACES, ZERO, round_money
from billing.numbers import NumberRules, normalize_number
from billing.settings import Settings
from billing.storage.admin import AdminError
from billing.storage.database import Database
from billing.storage.models import Batch, Card, Cdr, LedgerEntry, NasClient, SecurityEvent

PIN_FAILURE_KINDS = ("unknown-pin", "wrong-pin", "card-locked", "lockout")
STATUS_STATES = ("inactive", "active", "locked", "expired", "exhausted", "retired")


class RevenueBy(enum.StrEnum):
    TYPE = "type"
    DENOMINATION = "denomination"
    BATCH = "batch"
    DAY = "day"


# ---------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class BindBillRow:
    serial: str
    started_at: datetime
    calling_number: str
    called_number: str
    duration_seconds: int
    billed_seconds: int
    cost: Decimal
    balance_after: Decimal
    leg: str
    currency: str


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    currency: str
    calls: int
    cost: Decimal


@dataclass(frozen=True, slots=True)
class BindBill:
    ani: str
    from_date: date | None
    to_date: date | None
    rows: tuple[BindBillRow, ...]
    calls: int
    total_duration_seconds: int
    total_billed_seconds: int
    totals: tuple[CurrencyTotal, ...]  # cost by currency


@dataclass(frozen=True, slots=True)
class StatusRow:
    batch: int
    type: str
    value: Decimal
    currency: str
    inactive: int
    active: int
    locked: int
    expired: int
    exhausted: int
    retired: int
    total: int


@dataclass(frozen=True, slots=True)
class RevenueRow:
    key: str | int | Decimal | date  # the card type, face value, batch id or day
    currency: str
    calls: int
    billed_seconds: int
    billed_minutes: Decimal
    call_revenue: Decimal  # sum of CDR costs (billed leg)
    recharges: Decimal  # sum of recharge ledger entries
    breakage: Decimal  # balances forfeited at expiry (minus the expiry ledger entries)


@dataclass(frozen=True, slots=True)
class LiabilityRow:
    batch: int
    type: str
    value: Decimal
    currency: str
    cards: int
    cards_with_balance: int
    liability: Decimal  # sum of positive balances: what card holders may still spend
    in_expired_cards: Decimal  # of which held by expired cards (grace period, or forfeit due)
    overdrawn_cards: int
    overdrawn: Decimal  # sum of negative balances (calls that ran past their grant)


@dataclass(frozen=True, slots=True)
class FailureSource:
    source: str  # calling number, or NAS name
    failures: int
    unknown_pin: int
    wrong_pin: int
    card_locked: int
    lockout: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True, slots=True)
class ManyCallers:
    serial: str
    distinct_anis: int
    calls: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True, slots=True)
class NegativeCard:
    serial: str
    balance: Decimal
    currency: str
    state: str


@dataclass(frozen=True, slots=True)
class OverGrantCall:
    serial: str
    nas: str | None
    started_at: datetime
    calling_number: str
    called_number: str
    duration_seconds: int
    granted_seconds: int
    cost: Decimal
    close_reason: str


@dataclass(frozen=True, slots=True)
class Suspicious:
    since: date | None
    min_failures: int
    ani_threshold: int
    failures_by_ani: tuple[FailureSource, ...]
    failures_by_nas: tuple[FailureSource, ...]
    cards_many_anis: tuple[ManyCallers, ...]
    negative_balances: tuple[NegativeCard, ...]
    over_grant_calls: tuple[OverGrantCall, ...]


# ---------------------------------------------------------------------------------- helpers
def day_range(
    column: Any, from_date: date | None, to_date: date | None
) -> list[ColumnElement[bool]]:
    """Conditions for ``column`` within the whole UTC days [from_date, to_date]."""
    if from_date and to_date and from_date > to_date:
        raise AdminError(f"--from {from_date} is after --to {to_date}")
    conditions: list[ColumnElement[bool]] = []
    if from_date is not None:
        conditions.append(column >= datetime.combine(from_date, time.min))
    if to_date is not None:
        conditions.append(column < datetime.combine(to_date + timedelta(days=1), time.min))
    return conditions


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


class Reports:
    """Read-only reports on one database; each method is one transaction."""

    def __init__(
        self,
        db: Database,
        *,
        places: int = DEFAULT_PLACES,
        number_rules: NumberRules | None = None,
    ) -> None:
        self.db = db
        self.places = places
        self.number_rules = number_rules or NumberRules()

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Reports:
        return cls(db, places=settings.money_places, number_rules=settings.number_rules)

    def _money(self, value: Any) -> Decimal:
        if value is None:
            return round_money(ZERO, self.places)
        return round_money(Decimal(str(value)), self.places)

    def _day(self, column: Any) -> ColumnElement[Any]:
        """The UTC day of a timestamp column, as SQL."""
        if self.db.is_sqlite:
            return func.date(column)
        return cast(column, Date)

    # ----------------------------------------------------------------- bind number bill
    def bind_bill(
        self, ani: str, from_date: date | None = None, to_date: date | None = None
    ) -> BindBill:
        """Calls placed through a bound ANI: CDRs authorized by ANI from that calling number."""
        number = normalize_number(ani, self.number_rules)
        if not number:
            raise AdminError(f"not a usable telephone number: {ani!r}")
        conditions = [
            Cdr.calling_number == number,
            Cdr.auth_method == "ani",
            *day_range(Cdr.started_at, from_date, to_date),
        ]
        with self.db.transaction() as s:
            rows = s.execute(
                select(
                    Card.serial,
                    Cdr.started_at,
                    Cdr.calling_number,
                    Cdr.called_number,
                    Cdr.duration_seconds,
                    Cdr.billed_seconds,
                    Cdr.cost,
                    Cdr.balance_after,
                    Cdr.leg,
                    Card.currency,
                )
                .select_from(Cdr)
                .join(Card, Card.id == Cdr.card_id)
                .where(*conditions)
                .order_by(Cdr.started_at, Cdr.id)
            ).all()
            totals = s.execute(
                select(
                    Card.currency,
                    func.count(Cdr.id),
                    func.coalesce(func.sum(Cdr.duration_seconds), 0),
                    func.coalesce(func.sum(Cdr.billed_seconds), 0),
                    func.sum(Cdr.cost),
                )
                .select_from(Cdr)
                .join(Card, Card.id == Cdr.card_id)
                .where(*conditions)
                .group_by(Card.currency)
                .order_by(Card.currency)
            ).all()
        return BindBill(
            ani=number,
            from_date=from_date,
            to_date=to_date,
            rows=tuple(
                BindBillRow(
                    serial=str(r.serial),
                    started_at=r.started_at,
                    calling_number=r.calling_number,
                    called_number=r.called_number,
                    duration_seconds=r.duration_seconds,
                    billed_seconds=r.billed_seconds,
                    cost=self._money(r.cost),
                    balance_after=self._money(r.balance_after),
                    leg=r.leg,
                    currency=r.currency,
                )
                for r in rows
            ),
            calls=sum(int(t[1]) for t in totals),
            total_duration_seconds=sum(int(t[2]) for t in totals),
            total_billed_seconds=sum(int(t[3]) for t in totals),
            totals=tuple(CurrencyTotal(t[0], int(t[1]), self._money(t[4])) for t in totals),
        )

    # ----------------------------------------------------------------- card status
    def status(self, batch_id: int | None = None) -> list[StatusRow]:
        """Card counts by batch and type, one column per effective state ("locked" first)."""

        def count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
            return func.sum(case((condition, 1), else_=0))

        unlocked = Card.locked.is_(False)
        columns = [count(Card.locked.is_(True))] + [
            count(unlocked & (Card.state == state)) for state in STATUS_STATES if state != "locked"
        ]
        stmt = (
            select(
                Card.batch_id,
                Card.card_type,
                Batch.face_value,
                Card.currency,
                *columns,
                func.count(Card.id),
            )
            .select_from(Card)
            .join(Batch, Batch.id == Card.batch_id)
            .group_by(Card.batch_id, Card.card_type, Batch.face_value, Card.currency)
            .order_by(Card.batch_id, Card.card_type)
        )
        with self.db.transaction() as s:
            if batch_id is not None:
                if s.get(Batch, batch_id) is None:
                    raise AdminError(f"no batch with id {batch_id}")
                stmt = stmt.where(Card.batch_id == batch_id)
            rows = s.execute(stmt).all()
        result = []
        for r in rows:
            locked, inactive, active, expired, exhausted, retired = (int(x) for x in r[4:10])
            result.append(
                StatusRow(
                    batch=int(r[0]),
                    type=r[1],
                    value=self._money(r[2]),
                    currency=r[3],
                    inactive=inactive,
                    active=active,
                    locked=locked,
                    expired=expired,
                    exhausted=exhausted,
                    retired=retired,
                    total=int(r[10]),
                )
            )
        return result

    # ----------------------------------------------------------------- revenue
    def revenue(
        self,
        by: RevenueBy | str,
        from_date: date | None = None,
        to_date: date | None = None,
    ) -> list[RevenueRow]:
        """Call revenue, calls, billed minutes, recharges and breakage per group and currency.

        Calls are the billed legs of CDRs that stopped in the period; recharges and breakage
        (balances forfeited at expiry) are ledger entries written in the period.
        """
        try:
            mode = RevenueBy(by)
        except ValueError:
            choices = ", ".join(m.value for m in RevenueBy)
            raise AdminError(f"cannot group revenue by {by!r}: use one of {choices}") from None

        # Grouped in the database by day, or by the card's batch and type (whatever the mode:
        # the type, face value or batch of a group is then picked here from a few rows). A
        # face value is the batch's, so by denomination joins no third table to a million
        # calls.
        def keys(time_column: Any) -> list[Any]:
            if mode == RevenueBy.DAY:
                return [self._day(time_column).label("day")]
            return [Card.batch_id, Card.card_type]

        call_keys = keys(Cdr.stopped_at)
        calls = (
            select(
                *call_keys,
                Card.currency,
                func.count(Cdr.id),
                func.coalesce(func.sum(Cdr.billed_seconds), 0),
                func.sum(Cdr.cost),
            )
            .select_from(Cdr)
            .join(Card, Card.id == Cdr.card_id)
            .where(Cdr.leg == "billed", *day_range(Cdr.stopped_at, from_date, to_date))
            .group_by(*call_keys, Card.currency)
        )
        ledger_keys = keys(LedgerEntry.created_at)
        recharge = case((LedgerEntry.kind == "recharge", LedgerEntry.amount), else_=literal(0))
        expiry = case((LedgerEntry.kind == "expiry", LedgerEntry.amount), else_=literal(0))
        ledger = (
            select(*ledger_keys, Card.currency, func.sum(recharge), func.sum(expiry))
            .select_from(LedgerEntry)
            .join(Card, Card.id == LedgerEntry.card_id)
            .where(
                LedgerEntry.kind.in_(("recharge", "expiry")),
                *day_range(LedgerEntry.created_at, from_date, to_date),
            )
            .group_by(*ledger_keys, Card.currency)
        )
        faces: dict[int, Decimal] = {}

        def key_of(row: Sequence[Any]) -> Any:
            if mode == RevenueBy.DAY:
                return _as_date(row[0])
            if mode == RevenueBy.DENOMINATION:
                return faces[int(row[0])]
            if mode == RevenueBy.BATCH:
                return int(row[0])
            return str(row[1])

        def exact(value: Any) -> Decimal:
            return ZERO if value is None else Decimal(str(value))

        groups: dict[tuple[Any, str], dict[str, Any]] = {}

        def group(row: Sequence[Any], currency: str) -> dict[str, Any]:
            return groups.setdefault(
                (key_of(row), currency),
                {"calls": 0, "seconds": 0, "revenue": ZERO, "recharges": ZERO, "breakage": ZERO},
            )

        width = len(call_keys)
        with self.db.transaction() as s:
            if mode == RevenueBy.DENOMINATION:
                faces = {
                    int(i): self._money(v) for i, v in s.execute(select(Batch.id, Batch.face_value))
                }
            for row in s.execute(calls):
                currency, n, seconds, revenue = row[width:]
                g = group(row, currency)
                g["calls"] += int(n)
                g["seconds"] += int(seconds)
                g["revenue"] += exact(revenue)
            for row in s.execute(ledger):
                currency, recharged, forfeited = row[width:]
                g = group(row, currency)
                g["recharges"] += exact(recharged)
                g["breakage"] -= exact(forfeited)
        return [
            RevenueRow(
                key=key,
                currency=currency,
                calls=g["calls"],
                billed_seconds=g["seconds"],
                billed_minutes=Decimal(g["seconds"]) / 60,
                call_revenue=round_money(g["revenue"], self.places),
                recharges=round_money(g["recharges"], self.places),
                breakage=round_money(g["breakage"], self.places),
            )
            for (key, currency), g in sorted(groups.items())
        ]

    # ----------------------------------------------------------------- liability
    def liability(self) -> list[LiabilityRow]:
        """What card holders may still spend, by batch: the sum of positive balances.

        Forfeited balances are 0 and so are not owed; balances of expired cards still in their
        grace period (or waiting for the next expiry run) are owed until forfeited, and shown
        apart. Negative balances (calls that ran past their grant) are not netted against the
        liability but shown as ``overdrawn``.
        """
        positive = Card.balance > 0
        negative = Card.balance < 0
        expired = Card.state == "expired"
        zero = literal(0)
        stmt = (
            select(
                Card.batch_id,
                Card.card_type,
                Batch.face_value,
                Card.currency,
                func.count(Card.id),
                func.sum(case((positive, 1), else_=0)),
                func.sum(case((positive, Card.balance), else_=zero)),
                func.sum(case((positive & expired, Card.balance), else_=zero)),
                func.sum(case((negative, 1), else_=0)),
                func.sum(case((negative, Card.balance), else_=zero)),
            )
            .select_from(Card)
            .join(Batch, Batch.id == Card.batch_id)
            .group_by(Card.batch_id, Card.card_type, Batch.face_value, Card.currency)
            .order_by(Card.batch_id)
        )
        with self.db.transaction() as s:
            rows = s.execute(stmt).all()
        return [
            LiabilityRow(
                batch=int(r[0]),
                type=r[1],
                value=self._money(r[2]),
                currency=r[3],
                cards=int(r[4]),
                cards_with_balance=int(r[5] or 0),
                liability=self._money(r[6]),
                in_expired_cards=self._money(r[7]),
                overdrawn_cards=int(r[8] or 0),
                overdrawn=self._money(r[9]),
            )
            for r in rows
        ]

    # ----------------------------------------------------------------- suspicious usage
    @staticmethod
    def _many_callers(start: datetime | None, ani_threshold: int, limit: int) -> Any:
        """Cards used (billed calls) from more than ``ani_threshold`` distinct calling numbers
        since ``start``: serial, numbers, calls, first start, last stop; most numbers first.

        Counted as distinct (card, number) pairs, sorted once, then pairs per card: a
        ``count(DISTINCT ...)`` per card would sort each card's numbers apart and needs the
        card's serial for every call, and a hashed DISTINCT of a million pairs spills to
        disk; the CTE's ORDER BY has PostgreSQL sort instead (twice as fast over a million
        calls). Calls and times are then read, through ``cdrs(card_id, started_at)``, for
        the ``limit`` cards shown only.
        """
        conditions = [Cdr.leg == "billed", Cdr.calling_number != ""]
        if start is not None:
            conditions.append(Cdr.stopped_at >= start)
        pairs = (
            select(Cdr.card_id, Cdr.calling_number)
            .where(*conditions)
            .distinct()
            .order_by(Cdr.card_id, Cdr.calling_number)
            .cte("pairs")
        )
        numbers = func.count().label("numbers")
        many = (
            select(pairs.c.card_id, numbers)
            .group_by(pairs.c.card_id)
            .having(numbers > ani_threshold)
            .cte("many")
        )
        top = (
            select(many.c.card_id, many.c.numbers, Card.serial)
            .join(Card, Card.id == many.c.card_id)
            .order_by(many.c.numbers.desc(), Card.serial)
            .limit(limit)
            .subquery("top")
        )

        return (
            select(
                top.c.serial,
                top.c.numbers,
                func.count(Cdr.id),
                func.min(Cdr.started_at),
                func.max(Cdr.stopped_at),
            )
            .select_from(top)
            .join(Cdr, Cdr.card_id == top.c.card_id)
            .where(*conditions)
            .group_by(top.c.serial, top.c.numbers)
            .order_by(top.c.numbers.desc(), top.c.serial)
        )

    def suspicious(
        self,
        since: date | None = None,
        min_failures: int = 5,
        ani_threshold: int = 3,
        limit: int = 50,
    ) -> Suspicious:
        """Signs of fraud since ``since`` (whole UTC days; None: all time).

        - calling numbers and NAS clients with at least ``min_failures`` PIN failures
          (security events unknown-pin, wrong-pin, card-locked, lockout);
        - cards used from more than ``ani_threshold`` distinct calling numbers;
        - cards with a negative balance (whatever the date);
        - calls that lasted longer than granted.

        Each list is sorted worst first and cut at ``limit`` rows.
        """
        if min_failures < 1:
            raise AdminError("--min-failures must be at least 1")
        if ani_threshold < 0:
            raise AdminError("--ani-threshold must not be negative")
        if limit < 1:
            raise AdminError("--limit must be at least 1")
        start = datetime.combine(since, time.min) if since is not None else None

        def failures(source: Any, *extra: ColumnElement[bool]) -> Any:
            n = func.count(SecurityEvent.id)
            columns = [
                func.sum(case((SecurityEvent.kind == kind, 1), else_=0))
                for kind in PIN_FAILURE_KINDS
            ]
            stmt = (
                select(
                    source,
                    n,
                    *columns,
                    func.min(SecurityEvent.created_at),
                    func.max(SecurityEvent.created_at),
                )
                .select_from(SecurityEvent)
                .where(SecurityEvent.kind.in_(PIN_FAILURE_KINDS), *extra)
                .group_by(source)
                .having(n >= min_failures)
                .order_by(n.desc(), source)
                .limit(limit)
            )
            if start is not None:
                stmt = stmt.where(SecurityEvent.created_at >= start)
            return stmt

        nas_name = func.coalesce(NasClient.name, literal("(removed NAS)", String()))
        by_ani = failures(SecurityEvent.calling_number, SecurityEvent.calling_number != "")
        by_nas = failures(nas_name, SecurityEvent.nas_id.is_not(None)).outerjoin(
            NasClient, NasClient.id == SecurityEvent.nas_id
        )

        many = self._many_callers(start, ani_threshold, limit)
        negative = (
            select(Card.serial, Card.balance, Card.currency, Card.state, Card.locked)
            .where(Card.balance < 0)
            .order_by(Card.balance, Card.serial)
            .limit(limit)
        )
        over = (
            select(
                Card.serial,
                NasClient.name,
                Cdr.started_at,
                Cdr.calling_number,
                Cdr.called_number,
                Cdr.duration_seconds,
                Cdr.granted_seconds,
                Cdr.cost,
                Cdr.close_reason,
            )
            .select_from(Cdr)
            .join(Card, Card.id == Cdr.card_id)
            .outerjoin(NasClient, NasClient.id == Cdr.nas_id)
            .where(Cdr.over_grant == true())
            .order_by(Cdr.stopped_at.desc(), Cdr.id.desc())
            .limit(limit)
        )
        if start is not None:
            over = over.where(Cdr.stopped_at >= start)

        def sources(rows: Sequence[Any]) -> tuple[FailureSource, ...]:
            return tuple(
                FailureSource(
                    source=str(r[0]),
                    failures=int(r[1]),
                    unknown_pin=int(r[2]),
                    wrong_pin=int(r[3]),
                    card_locked=int(r[4]),
                    lockout=int(r[5]),
                    first_at=r[6],
                    last_at=r[7],
                )
                for r in rows
            )

        with self.db.transaction() as s:
            ani_rows = s.execute(by_ani).all()
            nas_rows = s.execute(by_nas).all()
            many_rows = s.execute(many).all()
            negative_rows = s.execute(negative).all()
            over_rows = s.execute(over).all()
        return Suspicious(
            since=since,
            min_failures=min_failures,
            ani_threshold=ani_threshold,
            failures_by_ani=sources(ani_rows),
            failures_by_nas=sources(nas_rows),
            cards_many_anis=tuple(
                ManyCallers(str(r[0]), int(r[1]), int(r[2]), r[3], r[4]) for r in many_rows
            ),
            negative_balances=tuple(
                NegativeCard(str(r[0]), self._money(r[1]), r[2], "locked" if r[4] else r[3])
                for r in negative_rows
            ),
            over_grant_calls=tuple(
                OverGrantCall(
                    serial=str(r[0]),
                    nas=r[1],
                    started_at=r[2],
                    calling_number=r[3],
                    called_number=r[4],
                    duration_seconds=int(r[5]),
                    granted_seconds=int(r[6]),
                    cost=self._money(r[7]),
                    close_reason=r[8],
                )
                for r in over_rows
            ),
        )
