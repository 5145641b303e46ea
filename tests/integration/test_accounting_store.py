"""Accounting on the store, on SQLite and on PostgreSQL: the common packets of an authorized call
(Start, Interim-Update, Stop, matched by Class token or by the NAS's session key) and the
exactly-once rules that must hold however they are repeated, reordered or raced.

Money at the example rate (0.07/min, fee 0.05, 30/6): cost(125 s) = 0.1970 (126 s billed).
"""

from __future__ import annotations

import itertools
import re
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, func, select
from store_support import EPOCH, add_card, nas_id, pin_of, store_fixture

from billing.calls import Accepted, AcctEvent, AcctResult, AcctStatus, AuthRequest
from billing.storage.models import Card, Cdr, LedgerEntry, LiveSession
from billing.storage.store import SessionPolicy, Store, session_key

CALL_COST = Decimal("0.1970")  # 125 s at the example rate


store = store_fixture(SessionPolicy(stale_margin_seconds=60))

serials = itertools.count(6_000_000_001)


class Call:
    """One call on a fresh card: its grant, and its accounting packets as a NAS sends them."""

    def __init__(
        self, store: Store, balance: str = "5.00", authorized: bool = True, **card: Any
    ) -> None:
        self.store = store
        self.serial = next(serials)
        self.card_id = add_card(store, self.serial, Decimal(balance), **card)
        self.nas_id = nas_id(store)
        self.session_id = f"sess-{self.serial}"
        self.token: str | None = None
        if not authorized:  # a grant lost, or made by another server
            return
        granted = store.authorize(self.request(), EPOCH)
        assert isinstance(granted, Accepted), granted
        self.token = granted.token

    def request(self) -> AuthRequest:
        """The Access-Request of this call's card."""
        return AuthRequest(
            nas_id=self.nas_id,
            user_name=pin_of(self.serial),
            password=None,
            calling_number="1555",
            called_number="441234",
            acct_session_id=self.session_id,
        )

    def send(
        self, status: AcctStatus, at: int, seconds: int | None = None, echo_class: bool = True
    ) -> AcctResult:
        """The packet ``at`` seconds after the grant, with Acct-Session-Time ``seconds``."""
        when = EPOCH + timedelta(seconds=at)
        return self.store.account(
            AcctEvent(
                nas_id=self.nas_id,
                status=status,
                event_at=when,
                token=self.token if echo_class else None,
                acct_session_id=self.session_id,
                user_name=pin_of(self.serial),
                calling_number="1555",
                called_number="441234",
                session_seconds=seconds,
            ),
            when,
        )

    def card(self) -> Card:
        with self.store.db.transaction() as s:
            found = s.get(Card, self.card_id)
            assert found is not None
            return found

    def live(self) -> LiveSession:
        with self.store.db.transaction() as s:
            return s.scalars(select(LiveSession).where(LiveSession.card_id == self.card_id)).one()

    def cdrs(self) -> list[Cdr]:
        with self.store.db.transaction() as s:
            return list(s.scalars(select(Cdr).where(Cdr.card_id == self.card_id)))

    def call_debits(self) -> list[Decimal]:
        with self.store.db.transaction() as s:
            return list(
                s.scalars(
                    select(LedgerEntry.amount)
                    .where(LedgerEntry.card_id == self.card_id)
                    .where(LedgerEntry.kind == "call")
                )
            )


def test_call_matched_by_class_is_started_updated_and_billed(store: Store) -> None:
    call = Call(store)
    assert call.send(AcctStatus.START, 0).outcome == "started"
    assert call.send(AcctStatus.INTERIM, 60, seconds=60).outcome == "updated"
    live = call.live()
    assert (live.state, live.session_seconds, live.started_at) == ("started", 60, EPOCH)
    assert live.deadline_at > EPOCH + timedelta(seconds=60)

    billed = call.send(AcctStatus.STOP, 125, seconds=125)

    assert (billed.outcome, billed.serial, billed.cost) == ("billed", str(call.serial), CALL_COST)
    assert call.card().balance == Decimal("5.00") - CALL_COST
    (cdr,) = call.cdrs()
    assert (cdr.call_key, cdr.duration_seconds, cdr.billed_seconds) == (call.token, 125, 126)
    assert (cdr.cost, cdr.balance_after, cdr.close_reason) == (CALL_COST, Decimal("4.803"), "stop")
    assert cdr.session_key == session_key(call.nas_id, 0, call.session_id, None)
    assert call.call_debits() == [-CALL_COST]
    live = call.live()
    assert (live.state, live.session_seconds, live.reserved_amount) == ("closed", 125, 0)


def test_call_without_class_is_matched_by_its_session_key(store: Store) -> None:
    call = Call(store)
    assert call.send(AcctStatus.START, 0, echo_class=False).outcome == "started"
    assert call.live().session_key == session_key(call.nas_id, 0, call.session_id, None)
    assert call.send(AcctStatus.INTERIM, 60, seconds=60, echo_class=False).outcome == "updated"

    billed = call.send(AcctStatus.STOP, 125, seconds=125, echo_class=False)

    assert (billed.outcome, billed.cost) == ("billed", CALL_COST)
    (cdr,) = call.cdrs()
    assert cdr.call_key == call.token  # the grant's call, not a second one
    assert call.card().balance == Decimal("5.00") - CALL_COST


def test_interim_and_start_after_stop_are_duplicates_that_change_nothing(store: Store) -> None:
    call = Call(store)
    call.send(AcctStatus.START, 0)
    call.send(AcctStatus.STOP, 125, seconds=125)
    before = call.live()

    late = [
        call.send(AcctStatus.INTERIM, 300, seconds=300),
        call.send(AcctStatus.START, 310),
        call.send(AcctStatus.STOP, 400, seconds=400),
    ]

    assert [r.outcome for r in late] == ["duplicate"] * 3
    assert {r.serial for r in late} == {str(call.serial)}
    after = call.live()
    assert (after.state, after.session_seconds) == ("closed", 125)
    assert (after.deadline_at, after.last_update_at) == (before.deadline_at, before.last_update_at)
    assert call.card().balance == Decimal("5.00") - CALL_COST
    assert len(call.cdrs()) == 1
    assert call.call_debits() == [-CALL_COST]


@pytest.mark.parametrize("authorized", [True, False], ids=["granted", "never-authorized"])
def test_concurrent_stop_retransmissions_debit_once(store: Store, authorized: bool) -> None:
    call = Call(store, authorized=authorized)
    if authorized:
        call.send(AcctStatus.START, 0)
    copies = 8
    barrier = threading.Barrier(copies)
    results: list[AcctResult] = []
    errors: list[BaseException] = []

    def stop() -> None:
        barrier.wait()
        try:
            results.append(call.send(AcctStatus.STOP, 125, seconds=125))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=stop) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(r.outcome for r in results) == ["billed"] + ["duplicate"] * (copies - 1)
    assert call.card().balance == Decimal("5.00") - CALL_COST
    (cdr,) = call.cdrs()
    expected = ("pin", False) if authorized else ("none", True)  # rated at today's rate, no grant
    assert (cdr.auth_method, cdr.over_grant) == expected
    assert call.call_debits() == [-CALL_COST]


def test_first_call_starts_the_validity_of_a_first_use_card(store: Store) -> None:
    call = Call(store, state="inactive", activation_mode="first-use", validity_days=30)
    started = EPOCH + timedelta(seconds=5)

    assert call.send(AcctStatus.START, 5).outcome == "started"
    assert call.send(AcctStatus.START, 9).outcome == "started"  # a copy of it, later

    card = call.card()
    assert (card.state, card.first_used_at, card.activated_at) == ("active", started, started)
    assert card.expires_at == started + timedelta(days=30)
    assert call.send(AcctStatus.STOP, 130, seconds=125).cost == CALL_COST
    card = call.card()
    assert card.first_used_at == started
    assert card.balance == Decimal("5.00") - CALL_COST


def test_stop_of_an_authorized_call_is_a_handful_of_statements(store: Store) -> None:
    call = Call(store)
    call.send(AcctStatus.START, 0)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        """Each statement as its verb and main table (subqueries left out); a data-modifying
        CTE's inserts as one."""
        if sql.startswith("WITH"):
            statements.append("INSERT " + "+".join(re.findall(r"INSERT INTO (\w+)", sql)))
            return
        lateral = sql.partition("JOIN LATERAL (")[2]
        while (outer := re.sub(r"\([^()]*\)", "", sql)) != sql:
            sql = outer
            lateral = re.sub(r"\([^()]*\)", "", lateral)
        words = sql.split()
        if words[0] in ("SELECT", "DELETE"):
            table = words[words.index("FROM") + 1]
            if table == "unnest":  # one lookup per value of an array, in a lateral subquery
                table = re.findall(r"\bFROM\s+(\w+)", lateral)[0]
            statements.append(f"{words[0]} {table}")
        elif words[0] in ("INSERT", "UPDATE"):
            statements.append(f"{words[0]} {words[2 if words[0] == 'INSERT' else 1]}")

    event.listen(store.db.engine, "before_cursor_execute", record)
    try:
        call.send(AcctStatus.INTERIM, 60, seconds=60)
        interim = list(statements)
        statements.clear()
        call.send(AcctStatus.STOP, 125, seconds=125)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", record)

    # PostgreSQL: the card locked, found by the call's token; then the call, locked, with the
    # card's columns and the NAS's boot epoch (on the hot path both go in one message).
    # SQLite, which has one writer at a time and no row locks: the call and its card.
    reads = (
        ["SELECT live_sessions"] if store.db.is_sqlite else ["SELECT cards", "SELECT live_sessions"]
    )
    assert interim == [*reads, "UPDATE live_sessions"]
    assert statements == [
        *reads,
        "UPDATE cards",
        # PostgreSQL: one statement, which needs no round trip of its own (the CDR's id is not
        # read back); SQLite: the CDR's id read back for its ledger entry.
        *(
            ["INSERT cdrs", "INSERT ledger_entries"]
            if store.db.is_sqlite
            else ["INSERT cdrs+ledger_entries"]
        ),
        "UPDATE live_sessions",
    ]
    with store.db.transaction() as s:
        assert s.scalar(select(func.count(Cdr.id)).where(Cdr.card_id == call.card_id)) == 1


def test_finished_calls_are_purged_once_past_the_retention(store: Store) -> None:
    """Kept ``closed_session_retention_days`` (30) after they closed, for late duplicates; then
    the reaper deletes them (through the index on finished calls' ``closed_at``); the CDR stays."""
    call = Call(store)
    call.send(AcctStatus.START, 0)
    call.send(AcctStatus.STOP, 130, seconds=125)
    store.reap(EPOCH + timedelta(days=30, seconds=129))
    assert call.live().state == "closed"  # closed 30 days ago less a second: kept
    assert store.reap(EPOCH + timedelta(days=30, seconds=131)).purged >= 1
    with store.db.transaction() as s:
        left = s.scalar(
            select(func.count(LiveSession.id)).where(LiveSession.card_id == call.card_id)
        )
    assert left == 0
    assert [c.cost for c in call.cdrs()] == [CALL_COST]


def test_grants_never_started_are_released_in_chunks_and_free_their_cards(store: Store) -> None:
    calls = [Call(store) for _ in range(5)]  # Max Calls 1: each card is in use
    now = EPOCH + timedelta(seconds=121)  # past the start timeout (120 s)
    result = store.reap(now, chunk=2)  # three transactions for these five, at least
    assert result.released >= 5
    for call in calls:
        live = call.live()
        assert (live.state, live.closed_at) == ("released", now)
        assert call.card().balance == Decimal("5.00")  # a released grant costs nothing
    assert isinstance(store.authorize(calls[0].request(), now), Accepted)  # the card is free
    assert store.reap(now, chunk=2).released == 0  # nothing left to release


@pytest.mark.parametrize("store", ["postgres"], indirect=True)  # SQLite has one writer at a time
def test_the_reaper_skips_a_grant_a_request_holds_instead_of_waiting(store: Store) -> None:
    held, free = Call(store), Call(store)
    now = EPOCH + timedelta(seconds=121)
    with store.db.engine.connect() as other:
        other.execute(  # what a late Start does to its grant, under way in another process
            select(LiveSession.id).where(LiveSession.card_id == held.card_id).with_for_update()
        ).all()
        outcome: list[Any] = []
        reaper = threading.Thread(target=lambda: outcome.append(store.reap(now)))
        reaper.start()
        reaper.join(timeout=10)
        assert not reaper.is_alive(), "the reaper waited for a lock a request held"
        assert (held.live().state, free.live().state) == ("authorized", "released")
        other.rollback()
    assert store.reap(now).released >= 1
    assert held.live().state == "released"
