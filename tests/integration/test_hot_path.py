"""The server's hot statements on PostgreSQL's bare cursor (``HotConnection``): the same rows,
the same errors and the same recovery from a dropped connection as through SQLAlchemy.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import psycopg2.extensions
import pytest
from sqlalchemy import Connection, create_engine, insert, select, text
from sqlalchemy.exc import DataError, IntegrityError
from store_support import (
    EPOCH,
    add_card,
    calls_sql,
    explain_as_served,
    nas_id,
    pin_of,
    pin_request,
    plan_buffers,
    store_fixture,
)

from billing.calls import Accepted, AcctEvent, AcctStatus, Rejected
from billing.domain import RejectReason
from billing.storage.database import Database, HotConnection, _Many, _pack, _Plan, _Rows
from billing.storage.rates import _RATES_OF_GROUP
from billing.storage.store import (
    _UPDATE_BY_ID,
    BATCH,
    CALL_FOR_UPDATE,
    CARD_LOOKUPS,
    CARD_OF_TOKEN,
    CDR_AND_LEDGER,
    INSERT_GRANT,
    INSERT_LEDGER,
    SECURITY_EVENT,
    SessionPolicy,
    Store,
    _cards,
    _live,
)

serials = itertools.count(7_000_000_001)


store = store_fixture(SessionPolicy(), backends=("postgres",))


def authorize(store: Store, serial: int, nas: int | None = None) -> Accepted:
    nas = nas if nas is not None else nas_id(store)
    result = store.authorize(pin_request(nas, serial, f"s-{serial}"), EPOCH)
    assert isinstance(result, Accepted), result
    return result


def start_and_stop(store: Store, granted: Accepted, nas: int, serial: int) -> list[str]:
    """The granted call's Start, then its Stop after 125 s: the outcome of each."""
    outcomes = []
    for status, seconds in ((AcctStatus.START, None), (AcctStatus.STOP, 125)):
        at = EPOCH + timedelta(seconds=seconds or 0)
        event = AcctEvent(
            nas_id=nas,
            status=status,
            event_at=at,
            token=granted.token,
            acct_session_id=f"s-{serial}",
            session_seconds=seconds,
        )
        outcomes.append(store.account(event, at).outcome)
    return outcomes


def both_ways(
    store: Store, statement: object, params: dict[str, object], prepare: bool
) -> tuple[list, list]:
    """The rows of ``statement`` on the hot path and through SQLAlchemy (as mappings), in one
    transaction."""
    with store.db.engine.begin() as conn:
        hot = HotConnection(conn, {}, prepare=prepare)
        fast = hot.execute(statement, params).all()  # type: ignore[arg-type]
        slow = conn.execute(statement, params).all()  # type: ignore[call-overload]
        return [dict(r._mapping) for r in fast], [dict(r._mapping) for r in slow]


@pytest.mark.parametrize("prepare", [True, False], ids=["prepared", "plain"])
def test_rows_are_the_same_values_and_types_as_sqlalchemy(store: Store, prepare: bool) -> None:
    serial = next(serials)
    add_card(store, serial, Decimal("5.00"))
    token = authorize(store, serial).token
    with store.db.engine.connect() as conn:
        live_id = conn.execute(
            text("SELECT id FROM live_sessions WHERE token = :t"), {"t": token}
        ).scalar()
    batch = BATCH[True]
    names = {"serials": [], "anis": [], "tokens": [token]}
    pin_hashes = [store._hash_pin(pin_of(serial))]
    cases = [
        (batch.locks[frozenset(CARD_LOOKUPS)], {**names, "pin_hashes": pin_hashes}),  # type: ignore[index]
        (
            batch.cards[frozenset(CARD_LOOKUPS) - {"tokens"}],
            {"serials": [], "anis": [], "pin_hashes": pin_hashes, "now": EPOCH},
        ),
        (batch.cards[frozenset({"pin_hashes"})], {"pin_hashes": pin_hashes, "now": EPOCH}),
        (batch.locks[frozenset({"pin_hashes"})], {"pin_hashes": pin_hashes}),  # type: ignore[index]
        (_RATES_OF_GROUP, {"rate_group": rate_group(store)}),
        (CARD_OF_TOKEN, {"token": token, "nas_id": nas_id(store)}),
        (CALL_FOR_UPDATE, {"live_id": live_id}),
    ]
    for statement, params in cases:
        fast, slow = both_ways(store, statement, params, prepare)
        assert fast == slow and fast, statement
        for fast_row, slow_row in zip(fast, slow, strict=True):
            # Money as Decimal, times as naive datetimes, exactly as SQLAlchemy gives them.
            assert {k: type(v) for k, v in fast_row.items()} == {
                k: type(v) for k, v in slow_row.items()
            }


def rate_group(store: Store) -> int:
    with store.db.engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM rate_groups")).scalar_one())


def grant_of(store: Store, card_id: int, token: str, **changes: Any) -> dict[str, Any]:
    """The parameters of ``INSERT_GRANT`` for a grant on ``card_id``."""
    return {
        "token": token,
        "card_id": card_id,
        "nas_id": nas_id(store),
        "auth_method": "pin",
        "acct_session_id": None,
        "conf_id": None,
        "calling_number": "",
        "called_number": "44",
        "rate_prefix": "44",
        "price_per_minute": Decimal("0.07"),
        "connection_fee": Decimal("0.05"),
        "first_increment": 30,
        "next_increment": 6,
        "grace_seconds": 0,
        "granted_seconds": 30,
        "reserved_amount": Decimal("0.085"),
        "authorized_at": EPOCH,
        "last_update_at": EPOCH,
        "deadline_at": EPOCH,
        **changes,
    }


def test_wide_statements_go_as_one_json_parameter_and_read_back_the_same(store: Store) -> None:
    """A statement with many parameters (a grant has 19) is sent as one JSON array, cast back
    to the columns' types by PostgreSQL: the values read back are those of SQLAlchemy's own
    path, to the microsecond and the last decimal (rounded to the column's scale alike)."""
    card_id = add_card(store, next(serials), Decimal("5.00"))
    values = {
        "acct_session_id": "sess-é'\\\"; DROP",  # quoting is JSON's and PostgreSQL's job
        "conf_id": None,
        "reserved_amount": Decimal("0.12345678"),  # numeric(18, 6): rounded by the column
        "authorized_at": EPOCH + timedelta(microseconds=123457),
        "granted_seconds": 10_800,
    }
    tokens = {"hot": f"hot-{card_id}", "slow": f"slow-{card_id}"}
    with store.db.engine.begin() as conn:
        hot = HotConnection(conn, {}, prepare=True)
        grant = grant_of(store, card_id, tokens["hot"], **values)
        plan = hot._plan(INSERT_GRANT, grant)
        assert plan is not None and plan.packed is not None
        sent = hot._mogrify(plan, grant)
        assert sent.startswith(b"EXECUTE paaa_") and sent.endswith(b"]')")  # one JSON literal
        assert b" ('[" in sent
        hot.execute(INSERT_GRANT, grant)
        conn.execute(INSERT_GRANT, grant_of(store, card_id, tokens["slow"], **values))
        rows = {
            token: conn.execute(select(_live).where(_live.c.token == token)).one()._mapping
            for token in tokens.values()
        }
    fast, slow = (dict(rows[tokens[k]]) for k in ("hot", "slow"))
    for row in (fast, slow):
        row.pop("id"), row.pop("token")
    assert fast == slow
    assert fast["reserved_amount"] == Decimal("0.123457")
    assert fast["authorized_at"] == EPOCH + timedelta(microseconds=123457)
    assert fast["acct_session_id"] == values["acct_session_id"]


def test_a_packed_value_too_long_for_its_column_is_refused_not_cut(store: Store) -> None:
    card_id = add_card(store, next(serials), Decimal("5.00"))
    grant = grant_of(store, card_id, "t" * 65)  # token is varchar(64)

    def insert(conn: Connection) -> None:
        conn.execute(INSERT_GRANT, grant)

    with pytest.raises(DataError):
        store.db.run(insert)


def test_a_value_json_cannot_carry_as_is_goes_the_usual_way(store: Store) -> None:
    """A time with a zone (or any type outside the JSON set) is sent as separate parameters,
    on a statement prepared for them, with the same result."""
    card_id = add_card(store, next(serials), Decimal("5.00"))
    aware = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert _pack(["a", 1, aware]) is None and _pack([b"bytes"]) is None
    assert _pack([float("nan")]) is None  # not JSON
    token = f"aware-{card_id}"

    def insert(conn: Connection) -> None:
        conn.execute(INSERT_GRANT, grant_of(store, card_id, token, deadline_at=aware))

    store.db.run(insert)
    with store.db.engine.connect() as conn:
        conn.execute(text("SET TIME ZONE 'UTC'"))
        deadline = conn.execute(
            text("SELECT deadline_at FROM live_sessions WHERE token = :t"), {"t": token}
        ).scalar_one()
    assert deadline == aware.replace(tzinfo=None)  # noon UTC, whatever the zone it came in


def test_a_unique_violation_is_sqlalchemys_integrity_error(store: Store) -> None:
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("5.00"))
    token = authorize(store, serial).token
    grant = grant_of(store, card_id, token)  # the token is taken already

    def insert_again(conn: Connection) -> None:
        conn.execute(INSERT_GRANT, grant)

    with pytest.raises(IntegrityError):
        store.db.run(insert_again)
    # The failed transaction was rolled back; the connection serves the next request.
    next_serial = next(serials)
    add_card(store, next_serial, Decimal("5.00"))
    authorize(store, next_serial)


def test_a_dropped_connection_is_replaced_and_its_statements_prepared_again(
    store: Store, postgres_url: str
) -> None:
    first, second = next(serials), next(serials)
    add_card(store, first, Decimal("5.00"))
    add_card(store, second, Decimal("5.00"))
    nas = nas_id(store)
    authorize(store, first, nas)  # the pool's connection has its statements prepared
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    admin.dispose()
    assert killed and killed >= 1
    # The first statement finds the connection dead; the transaction runs again on a new one,
    # which prepares its statements afresh.
    assert authorize(store, second, nas).session_seconds > 0


class _CountingCursor(psycopg2.extensions.cursor):
    """psycopg2's cursor, keeping the first word of each statement of every message it sends."""

    messages: list[list[str]] = []

    def execute(self, query: Any, vars: Any = None) -> Any:  # noqa: A002 - psycopg2's name
        sql = query.decode() if isinstance(query, bytes) else query
        self.messages.append([part.split()[0] for part in sql.split("; ")])
        return super().execute(query, vars)


@pytest.fixture
def counted(store: Store) -> Iterator[list[list[str]]]:
    """The store on connections whose every message to PostgreSQL is recorded."""
    engine = create_engine(
        store.db.engine.url, connect_args={"cursor_factory": _CountingCursor}, pool_size=1
    )
    real, store.db = store.db, Database(engine)
    _CountingCursor.messages = []
    try:
        yield _CountingCursor.messages
    finally:
        store.db = real
        engine.dispose()


def test_each_packet_of_a_call_takes_two_round_trips(
    store: Store, counted: list[list[str]]
) -> None:
    """As PostgreSQL receives them: every statement of a call a prepared ``EXECUTE`` (none
    left to SQLAlchemy's path), in two messages per packet: the locks and the reads, then the
    writes and the commit."""
    serial = next(serials)
    add_card(store, serial, Decimal("5.00"))
    authorize(store, serial)  # prepares the statements on this connection
    second = next(serials)
    add_card(store, second, Decimal("5.00"))
    nas = nas_id(store)
    counted.clear()
    granted = authorize(store, second, nas)
    auth = [m for m in counted if m[0] != "PREPARE"]
    counted.clear()
    assert start_and_stop(store, granted, nas, second) == ["started", "billed"]
    calls = [m for m in counted if m[0] != "PREPARE"]
    # BEGIN rides with the first statement, the writes with the next read or with COMMIT.
    assert auth == [
        # The card locked; then read, with its rate group's version and its open calls (the
        # rate is the server's copy).
        ["BEGIN", "EXECUTE", "EXECUTE"],
        ["EXECUTE", "COMMIT"],  # the grant
    ]
    assert calls == [
        ["BEGIN", "EXECUTE", "EXECUTE"],  # Start: the card locked, by token; the call, locked
        ["EXECUTE", "EXECUTE", "COMMIT"],  # the call and the card's first use
        ["BEGIN", "EXECUTE", "EXECUTE"],  # Stop: the card; the call
        ["EXECUTE", "EXECUTE", "EXECUTE", "COMMIT"],  # the debit, CDR and ledger, call closed
    ]
    with store.db.engine.connect() as conn:
        balance, cdrs = conn.execute(
            text(
                "SELECT c.balance, (SELECT count(*) FROM cdrs d WHERE d.card_id = c.id) "
                "FROM cards c WHERE c.serial = :s"
            ),
            {"s": second},
        ).one()
    assert (balance, cdrs) == (Decimal("4.8030"), 1)


def test_a_batch_takes_as_many_round_trips_as_one_request(
    store: Store, counted: list[list[str]]
) -> None:
    """Five authorizations and the Stops of two calls in one batch: three messages in all, as
    for one authorization, whatever their number; and one execution per statement, whatever
    the number of rows it writes."""
    nas = nas_id(store)
    cards = [next(serials) for _ in range(7)]
    for serial in cards:
        add_card(store, serial, Decimal("5.00"))
    calls = [authorize(store, serial, nas) for serial in cards[5:]]
    stops = [
        (
            AcctEvent(
                nas_id=nas,
                status=AcctStatus.STOP,
                event_at=EPOCH,
                token=granted.token,
                acct_session_id=f"b-{serial}",
                session_seconds=125,
            ),
            EPOCH,
        )
        for granted, serial in zip(calls, cards[5:], strict=True)
    ]
    counted.clear()
    auths, accts = store.process(
        [(pin_request(nas, serial, f"b-{serial}"), EPOCH) for serial in cards[:5]], stops
    )
    assert all(isinstance(result, Accepted) for result in auths), auths
    assert [result.outcome for result in accts] == ["billed", "billed"]  # type: ignore[union-attr]
    assert [m for m in counted if m[0] != "PREPARE"] == [
        ["BEGIN", "EXECUTE", "EXECUTE"],  # every card of the batch, locked; then read
        ["EXECUTE", "EXECUTE"],  # the five grants; both Stops' calls, locked
        ["EXECUTE"] * 3 + ["COMMIT"],  # both debits, both CDRs and ledger entries, both calls
    ]


def test_a_card_debited_by_three_stops_of_one_batch_is_updated_three_times_in_order(
    store: Store, counted: list[list[str]]
) -> None:
    """The Stops of three calls on one card in one batch: their CDRs go in one execution, their
    calls' updates in another, but the card's balance, written after each Stop, in three, one
    after the other, so the last one stands: the balance is the three debits' sum."""
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("50.00"))
    nas = nas_id(store)
    calls = [
        store.authorize(pin_request(nas, serial, f"t-{serial}-{leg}"), EPOCH) for leg in range(3)
    ]
    assert all(isinstance(granted, Accepted) for granted in calls), calls
    stops = [
        (
            AcctEvent(
                nas_id=nas,
                status=AcctStatus.STOP,
                event_at=EPOCH,
                token=granted.token,  # type: ignore[union-attr]
                acct_session_id=f"t-{serial}-{leg}",
                session_seconds=125,
            ),
            EPOCH,
        )
        for leg, granted in enumerate(calls)
    ]
    counted.clear()
    _, accts = store.process([], stops)
    assert [result.outcome for result in accts] == ["billed"] * 3  # type: ignore[union-attr]
    assert [m for m in counted if m[0] != "PREPARE"] == [
        ["BEGIN", "EXECUTE", "EXECUTE"],  # the card locked by the tokens; the calls locked
        # The first debit, the three CDRs and ledger entries, the three calls closed, then
        # the second and third debits.
        ["EXECUTE"] * 5 + ["COMMIT"],
    ]
    with store.db.engine.connect() as conn:
        balance, cdrs, ledger, open_calls = conn.execute(
            text(
                "SELECT c.balance, (SELECT count(*) FROM cdrs d WHERE d.card_id = c.id),"
                " (SELECT sum(amount) FROM ledger_entries e WHERE e.card_id = c.id),"
                " (SELECT count(*) FROM live_sessions s"
                "  WHERE s.card_id = c.id AND s.state <> 'closed')"
                " FROM cards c WHERE c.id = :id"
            ),
            {"id": card_id},
        ).one()
    assert (balance, cdrs, ledger, open_calls) == (
        Decimal("49.4090"),
        3,
        Decimal("-0.5910"),
        0,
    )


#: The parameters the store gives each statement that may go for several rows at once.
CDR_KEYS = [
    *("call_key", "session_key", "card_id", "nas_id", "acct_session_id", "conf_id", "leg"),
    *("auth_method", "calling_number", "called_number", "rate_prefix", "price_per_minute"),
    *("connection_fee", "started_at", "stopped_at", "duration_seconds", "billed_seconds"),
    *("granted_seconds", "cost", "balance_after", "over_grant", "close_reason"),
    *("terminate_cause", "created_at"),
]


def _plans(store: Store) -> dict[str, _Plan]:
    """The plans of the statements a batch defers, as the server compiles them."""
    card_id = add_card(store, next(serials), Decimal("5.00"))
    wanted = {
        "grant": (INSERT_GRANT, list(grant_of(store, card_id, "t"))),
        "cdr": (CDR_AND_LEDGER, CDR_KEYS),
        "debit": (_UPDATE_BY_ID[_cards], ["b_id", "balance"]),
        "close": (_UPDATE_BY_ID[_live], ["b_id", "state", "closed_at"]),
        "event": (SECURITY_EVENT, ["kind", "nas_id", "calling_number", "card_id", "created_at"]),
        # Not a statement of the server's: an insert of the rows the others refer to.
        "new card": (insert(_cards), ["serial", "batch_id", "pin_hash", "balance"]),
    }
    with store.db.engine.connect() as conn:
        hot = HotConnection(conn, {}, prepare=True)
        plans = {name: hot._compile(statement, keys) for name, (statement, keys) in wanted.items()}
    return {name: plan for name, plan in plans.items() if plan is not None}


def test_writes_change_places_only_with_writes_they_cannot_affect(store: Store) -> None:
    """Which deferred writes a later one may join across, as derived from the statements
    themselves: another table's updates, and inserts whose rows neither refers to the
    other's."""
    many = {name: plan.many for name, plan in _plans(store).items()}
    assert all(many.values()), many  # each may go for several rows at once
    grant, cdr, debit, close, event, card = (
        cast(_Many, many[name]) for name in ("grant", "cdr", "debit", "close", "event", "new card")
    )
    for one, other in ((debit, cdr), (cdr, close), (grant, cdr), (event, grant), (debit, close)):
        assert not one.conflicts(other) and not other.conflicts(one)
    assert grant.conflicts(close) and close.conflicts(grant)  # one table: order kept
    assert cdr.conflicts(card) and card.conflicts(cdr)  # a CDR's rows refer to cards
    assert debit.conflicts(card)  # the same table


def test_rows_of_one_execution_differ_in_their_id_and_agree_outside_their_values(
    store: Store,
) -> None:
    plans = _plans(store)
    debit, cdr = plans["debit"], plans["cdr"]
    at = cast(_Many, debit.many).key
    assert at is not None and debit.names[at] == "b_id"
    row = {name: ("1.00" if name == "balance" else 7) for name in debit.names}
    rows = _Rows(debit, [], set())
    assert rows.take([row[n] for n in debit.names])
    assert rows.take([{**row, "b_id": 8}[n] for n in debit.names])
    assert not rows.take([{**row, "balance": "3.00"}[n] for n in debit.names])  # card 7 again
    assert len(rows.rows) == 2
    # The CDR's ledger entry is written only for a cost other than a constant (0), which sits
    # outside the rows' values: every row of one execution must have the same.
    (outside,) = cast(_Many, cdr.many).shared
    first = [f"value-{i}" for i in range(len(cdr.names))]
    rows = _Rows(cdr, [], set())
    assert rows.take(first) and rows.take([*first[:outside], first[outside], *first[outside + 1 :]])
    assert not rows.take([*first[:outside], "other", *first[outside + 1 :]])
    assert len(rows.rows) == 2


def test_deferred_writes_run_in_order_inside_the_transaction(store: Store) -> None:
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("5.00"))
    balance = text("SELECT balance FROM cards WHERE id = :id")
    seen: list[Decimal] = []

    def work(conn: Connection) -> None:
        conn.defer(_UPDATE_BY_ID[_cards], {"b_id": card_id, "balance": Decimal("1.25")})  # type: ignore[attr-defined]
        seen.append(conn.execute(balance, {"id": card_id}).scalar_one())  # through SQLAlchemy
        raise RuntimeError("the request fails after its write")

    with pytest.raises(RuntimeError):
        store.db.run(work)
    assert seen == [Decimal("1.25")]  # the write went out before the read
    with store.db.engine.connect() as conn:
        assert conn.execute(balance, {"id": card_id}).scalar_one() == Decimal("5.00")


def test_a_deferred_write_that_fails_at_commit_rolls_everything_back(store: Store) -> None:
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("5.00"))
    taken = authorize(store, serial).token

    def work(conn: Connection) -> None:
        conn.defer(_UPDATE_BY_ID[_cards], {"b_id": card_id, "balance": Decimal("0.50")})  # type: ignore[attr-defined]
        conn.defer(_UPDATE_BY_ID[_live], {"b_id": live_id, "token": taken + "x"})  # type: ignore[attr-defined]
        conn.defer(INSERT_LEDGER, ledger)  # type: ignore[attr-defined]
        conn.defer(_UPDATE_BY_ID[_live], {"b_id": other_id, "token": taken + "x"})  # type: ignore[attr-defined]

    with store.db.engine.connect() as conn:
        live_id = conn.execute(
            text("SELECT id FROM live_sessions WHERE token = :t"), {"t": taken}
        ).scalar_one()
    other = next(serials)
    add_card(store, other, Decimal("5.00"))
    other_token = authorize(store, other).token
    with store.db.engine.connect() as conn:
        other_id = conn.execute(
            text("SELECT id FROM live_sessions WHERE token = :t"), {"t": other_token}
        ).scalar_one()
    ledger = {
        "card_id": card_id,
        "kind": "adjustment",
        "amount": Decimal("-4.50"),
        "balance_after": Decimal("0.50"),
        "cdr_id": None,
        "note": "",
        "created_at": EPOCH,
    }
    with pytest.raises(IntegrityError):  # the last write takes a token already taken
        store.db.run(work)
    with store.db.engine.connect() as conn:
        balance, entries, tokens = conn.execute(
            text(
                "SELECT c.balance, (SELECT count(*) FROM ledger_entries e WHERE e.card_id = c.id),"
                " (SELECT count(*) FROM live_sessions WHERE token IN (:a, :b))"
                " FROM cards c WHERE c.id = :id"
            ),
            {"id": card_id, "a": taken, "b": other_token},
        ).one()
    assert (balance, entries, tokens) == (Decimal("5.00"), 0, 2)  # as before the transaction
    # The connection went back clean: the next transaction on it works.
    third = next(serials)
    add_card(store, third, Decimal("5.00"))
    authorize(store, third)


@pytest.mark.parametrize("prepared", [True, False])
def test_prepared_statements_are_planned_once_per_connection(
    postgres_url: str, prepared: bool
) -> None:
    """PostgreSQL would otherwise re-plan the 40-parameter rate lookup at every execution."""
    db = Database.from_url(postgres_url, pool_size=1, prepared_statements=prepared)
    try:
        mode = db.run(lambda conn: conn.exec_driver_sql("SHOW plan_cache_mode").scalar())
    finally:
        db.dispose()
    assert mode == ("force_generic_plan" if prepared else "auto")


def test_a_cards_open_calls_are_read_from_its_own_index_whatever_the_statistics(
    store: Store,
) -> None:
    """The cards' read, with their open calls: its generic plan is made once per connection,
    with the statistics of that moment. Made while twenty thousand calls were finished and
    none open (a quiet hour), it must still read only the card's own open calls once twenty
    thousand calls of another card are open (not yet analyzed): the NAS's and the reaper's
    open-call indexes, scanned whole, would read every one of them."""
    nas = nas_id(store)
    card_serial = next(serials)
    add_card(store, card_serial, Decimal("5.00"))
    busy = add_card(store, next(serials), Decimal("5.00"))
    with store.db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(calls_sql(busy, nas, "closed", 20_000))
        conn.exec_driver_sql("ANALYZE live_sessions")
    statement = BATCH[True].cards[frozenset({"serials"})]
    params = {"serials": [card_serial], "now": EPOCH}

    def explain(conn: Any) -> tuple[list[Any], dict[str, Any]]:
        rows = conn.execute(statement, params).all()  # planned now, with those statistics
        conn.exec_driver_sql(calls_sql(busy, nas, "started", 20_000))
        plan = explain_as_served(conn, statement, params)
        conn.exec_driver_sql("DELETE FROM live_sessions WHERE token LIKE 'plan-%%'")
        return rows, plan

    rows, plan = store.db.run(explain)
    assert [(row.serial, row.open_count) for row in rows] == [(card_serial, 0)]
    assert plan_buffers(plan["Plan"]) < 50, plan


def _backend(conn: Any) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())


def test_a_thread_keeps_its_connection_between_transactions(postgres_url: str) -> None:
    db = Database.from_url(postgres_url, pool_size=2)
    try:
        first = db.run(_backend)
        assert db.run(_backend) == first
        with db.engine.connect() as other:  # the pool still serves everyone else
            assert _backend(other) != first
    finally:
        db.dispose()


def test_a_transaction_inside_another_gets_a_connection_of_its_own(postgres_url: str) -> None:
    """The outer transaction goes on after the inner one committed, on the held connection."""
    db = Database.from_url(postgres_url, pool_size=2)

    def txid(conn: Any) -> int:
        return int(conn.exec_driver_sql("SELECT txid_current()").scalar())

    def outer(conn: Any) -> tuple[int, int, int, int]:
        before = txid(conn)
        inner = db.run(_backend)
        return _backend(conn), before, inner, txid(conn)

    try:
        backend, before, inner, after = db.run(outer)
        assert inner != backend and before == after  # the outer transaction was not ended
        assert db.run(_backend) == backend
    finally:
        db.dispose()


def test_threads_never_share_a_connection(postgres_url: str) -> None:
    db = Database.from_url(postgres_url, pool_size=2)
    both_inside = threading.Barrier(2, timeout=10)

    def inside(conn: Any) -> int:
        backend = _backend(conn)
        both_inside.wait()  # each holds its transaction open while the other runs
        return backend

    try:
        with ThreadPoolExecutor(2) as threads:
            backends = list(threads.map(lambda _: db.run(inside), range(2)))
        assert backends[0] != backends[1]
    finally:
        db.dispose()


def test_an_authorization_that_waited_for_its_card_sees_the_grant_made_meanwhile(
    store: Store,
) -> None:
    """The card's lock and its read (with its open calls) go to PostgreSQL in one message:
    the read must still see what the transaction that held the lock committed. A card of one
    call at a time: another transaction holds it and grants a call; the authorization waits,
    and once that commits, is refused."""
    nas = nas_id(store)
    serial = next(serials)
    card = add_card(store, serial, Decimal("5.00"))
    holder = store.db.engine.connect()
    try:
        holder.execute(text("UPDATE cards SET max_calls = 1 WHERE id = :c"), {"c": card})
        holder.commit()
        holder.execute(text("SELECT id FROM cards WHERE id = :c FOR UPDATE"), {"c": card})
        holder.exec_driver_sql(
            calls_sql(card, nas, "authorized", 1).replace(
                "now() + interval '1 hour'", f"'{EPOCH + timedelta(hours=1)}'"
            )
        )
        with ThreadPoolExecutor(1) as thread:
            waiting = thread.submit(store.authorize, pin_request(nas, serial, "late"), EPOCH)
            for _ in range(200):  # until the authorization waits for the card's lock
                with store.db.engine.connect() as watch:
                    blocked = watch.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                        )
                    ).scalar()
                if blocked:
                    break
                threading.Event().wait(0.05)
            assert blocked, "the authorization never waited for the card"
            holder.commit()
            result = waiting.result(timeout=10)
    finally:
        holder.rollback()
        holder.close()
    assert isinstance(result, Rejected), result
    assert result.reason == RejectReason.IN_USE
