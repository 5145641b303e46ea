"""Generic plans made on a young database stay good as it grows.

The server's hot statements are prepared once per connection and planned once (generic plans),
with the statistics of that moment. On a new installation those say that ``live_sessions`` is
small; the plans must still read a few pages per request once it holds tens of thousands of
calls, before autovacuum analyzes it again. Each test here has a fresh database of its own, so
the table is as young as the test says.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from store_support import (
    add_card,
    calls_sql,
    explain_as_served,
    nas_id,
    pin_of,
    plan_buffers,
    store_fixture,
)

from billing.storage.database import _replan_due, _Rows
from billing.storage.store import _UPDATE_BY_ID, BATCH, SessionPolicy, Store, _live

serials = itertools.count(7_100_000_001)

store = store_fixture(SessionPolicy(), backends=("postgres",))


def _young(store: Store, calls: int) -> tuple[int, int, int, int]:
    """``live_sessions`` as young as a new table, with ``calls`` finished calls, vacuumed and
    analyzed; a card named by PIN and one busy card. Returns the NAS's id, the PIN card's
    serial and id, and the busy card's id."""
    nas = nas_id(store)
    by_pin = next(serials)
    by_pin_id = add_card(store, by_pin, Decimal("5.00"))
    busy = add_card(store, next(serials), Decimal("5.00"))
    with store.db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("TRUNCATE live_sessions CASCADE")
        conn.exec_driver_sql(calls_sql(busy, nas, "closed", calls))
        conn.exec_driver_sql("VACUUM ANALYZE live_sessions")
    return nas, by_pin, by_pin_id, busy


@pytest.mark.parametrize("young", [400, 900, 3000])
def test_the_card_locks_find_a_calls_card_by_its_token_whatever_the_statistics(
    store: Store, young: int
) -> None:
    """A batch locks its cards by PIN hash and, for accounting, by the call's token. Planned
    while ``young`` calls had ever been made, then run with twenty thousand more (not yet
    analyzed), the lookup by token must still be an index scan per token: a join that scans
    the whole table (what PostgreSQL made of it with 875 calls in the benchmark) reads them
    all in every batch (about 420 pages here, up to 900 calls; under 400 calls the lookup is
    planned as a scan of the table too, until the connection plans again, below)."""
    nas, by_pin, by_pin_id, busy = _young(store, young)
    statement = BATCH[True].locks[frozenset({"pin_hashes", "tokens"})]

    def explain(conn: Any) -> tuple[list[Any], dict[str, Any]]:
        conn.replan()  # planned afresh at the next use, with these statistics
        planned = {"pin_hashes": [store._hash_pin(pin_of(by_pin))], "tokens": ["none"]}
        conn.execute(statement, planned).all()  # prepared and planned now
        conn.exec_driver_sql(calls_sql(busy, nas, "started", 20_000))
        params = {**planned, "tokens": ["plan-started-7", "plan-started-19999"]}
        rows = conn.execute(statement, params).all()
        plan = explain_as_served(conn, statement, params)
        conn.exec_driver_sql("DELETE FROM live_sessions WHERE token LIKE 'plan-started-%%'")
        return rows, plan

    rows, plan = store.db.run(explain)
    assert sorted(row.id for row in rows) == sorted([by_pin_id, busy])
    assert plan_buffers(plan["Plan"]) < 50, plan


@pytest.mark.parametrize("young", [400, 3000])
def test_an_update_of_several_calls_at_once_reads_them_by_id_whatever_the_statistics(
    store: Store, young: int
) -> None:
    """The deferred updates of a batch's calls go as one execution, which joins its rows to
    ``live_sessions`` by id. Planned while ``young`` calls had ever been made, then run with
    twenty thousand more (not yet analyzed), it must read the calls it updates by their key,
    not the whole table (over 300 pages)."""
    nas, _, _, busy = _young(store, young)
    statement = _UPDATE_BY_ID[_live]

    def rows(ids: list[int]) -> _Rows:
        update = {"state": "started", "last_update_at": EPOCH_TEXT}
        plan = conn_plan[0]
        values = [[update[n] if n in update else i for n in plan.names] for i in ids]
        return _Rows(plan, values, set(ids))

    conn_plan: list[Any] = []

    def explain(conn: Any) -> tuple[int, dict[str, Any]]:
        conn.replan()
        plan = conn._plan(statement, {"b_id": 0, "state": "", "last_update_at": None})
        conn_plan.append(plan)
        conn._run(conn._rows_sql(rows([-1, -2])))  # prepared and planned now
        conn.exec_driver_sql(calls_sql(busy, nas, "started", 20_000))
        ids = [
            row[0]
            for row in conn.exec_driver_sql(
                "SELECT id FROM live_sessions WHERE token IN "
                "('plan-started-7', 'plan-started-19999')"
            )
        ]
        sql = conn._rows_sql(rows(ids)).decode()
        assert sql.startswith("EXECUTE ") and "[[" in sql  # the rows, in one execution
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        (plan,) = cursor.fetchone()[0]
        updated = conn.exec_driver_sql(
            "SELECT count(*) FROM live_sessions WHERE state = 'started' "
            "AND last_update_at = '2030-01-01 12:00:00'"
        ).scalar_one()
        conn.exec_driver_sql("DELETE FROM live_sessions WHERE token LIKE 'plan-started-%%'")
        return updated, plan

    updated, plan = store.db.run(explain)
    assert updated == 2
    assert plan_buffers(plan["Plan"]) < 50, plan


EPOCH_TEXT = "2030-01-01T12:00:00"


def test_plans_made_on_a_young_table_are_made_again_as_the_transactions_double(
    store: Store,
) -> None:
    """Planned while 50 calls had ever been made, the same lookup scans the table: too few
    for any statement shape to help. The connection plans its statements again when its
    transactions have doubled; the new plan takes the table's size from its file (20,000
    calls more, still not analyzed) and reads a few pages."""
    nas, by_pin, by_pin_id, busy = _young(store, 50)
    statement = BATCH[True].locks[frozenset({"pin_hashes", "tokens"})]
    params = {
        "pin_hashes": [store._hash_pin(pin_of(by_pin))],
        "tokens": ["plan-started-7", "plan-started-19999"],
    }

    def plan_now(conn: Any) -> None:
        conn.replan()  # as after a doubling: planned at the next use, with these statistics
        conn.execute(statement, params).all()

    def explain(conn: Any) -> tuple[list[Any], int]:
        rows = conn.execute(statement, params).all()
        return rows, plan_buffers(explain_as_served(conn, statement, params)["Plan"])

    store.db.run(plan_now)
    with store.db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(calls_sql(busy, nas, "started", 20_000))
    try:
        rows, stale = store.db.run(explain)
        assert sorted(row.id for row in rows) == sorted([by_pin_id, busy])
        assert stale > 300  # the young plan, still in use: the table read whole
        for _ in range(1_000):  # the connection's transactions double at least once
            store.db.run(lambda conn: conn.execute(statement, params).all())
        rows, fresh = store.db.run(explain)
        assert sorted(row.id for row in rows) == sorted([by_pin_id, busy])
        assert fresh < 50, fresh
    finally:
        with store.db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("DELETE FROM live_sessions WHERE token LIKE 'plan-started-%%'")


def test_the_plans_are_made_again_at_each_doubling_then_no_more() -> None:
    info: dict[str, Any] = {}
    due = [run for run in range(1, (1 << 24) + 10_000) if _replan_due(info)]
    assert due == [256 << k for k in range(17)]  # 256, 512, ... 16,777,216
