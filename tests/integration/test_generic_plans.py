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

from billing.storage.store import BATCH, SessionPolicy, Store

serials = itertools.count(7_100_000_001)

store = store_fixture(SessionPolicy(), backends=("postgres",))


@pytest.mark.parametrize("young", [400, 900, 3000])
def test_the_card_locks_find_a_calls_card_by_its_token_whatever_the_statistics(
    store: Store, young: int
) -> None:
    """A batch locks its cards by PIN hash and, for accounting, by the call's token. Planned
    while ``young`` calls had ever been made, then run with twenty thousand more (not yet
    analyzed), the lookup by token must still be an index scan per token: a join that scans
    the whole table (what PostgreSQL made of it with 875 calls in the benchmark) reads them
    all in every batch (about 420 pages here, up to 900 calls; under 400 calls the index
    scan is planned as a scan of the table too, until autovacuum analyzes it, after 50 calls
    and a tenth of the table)."""
    nas = nas_id(store)
    by_pin = next(serials)
    by_pin_id = add_card(store, by_pin, Decimal("5.00"))
    busy = add_card(store, next(serials), Decimal("5.00"))
    with store.db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("TRUNCATE live_sessions CASCADE")  # as young as a new table
        conn.exec_driver_sql(calls_sql(busy, nas, "closed", young))
        conn.exec_driver_sql("VACUUM ANALYZE live_sessions")
    statement = BATCH[True].locks[frozenset({"pin_hashes", "tokens"})]

    def explain(conn: Any) -> tuple[list[Any], dict[str, Any]]:
        conn.exec_driver_sql("DEALLOCATE ALL")  # plan afresh, with these statistics
        conn.connection.info.pop("prepaid_prepared", None)
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
