"""Property: whatever sequence of calls a card makes, the money adds up to the last decimal.

For random call sequences (authorize, maybe Start, Interims, Stop, duplicated Stops, Stops
without Start, grants that are never used) on one card, on SQLite and on PostgreSQL:
sum of CDR costs == balance change == minus the sum of call ledger entries, and no grant ever
promised more than the balance could pay at the time it was made.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from store_support import EPOCH, UK, add_card, nas_id, pin_of, store_fixture

from billing.calls import Accepted, AcctEvent, AcctStatus, AuthRequest
from billing.rating import cost
from billing.storage.models import Card, Cdr, LedgerEntry
from billing.storage.store import SessionPolicy, Store

store = store_fixture(SessionPolicy(stale_margin_seconds=60))

serials = itertools.count(5_000_000_001)

call = st.fixed_dictionaries(
    {
        "duration": st.integers(0, 900),
        "start": st.booleans(),
        "interims": st.lists(st.integers(0, 900), max_size=2),
        "stops": st.integers(0, 3),  # 0: the Stop is lost (closed later by the reaper)
        "echo_class": st.booleans(),
    }
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(balance=st.decimals("0", "3", places=2), calls=st.lists(call, min_size=1, max_size=6))
def test_cdrs_ledger_and_balance_agree(store: Store, balance: Decimal, calls: list[dict]) -> None:
    serial = next(serials)
    pin = pin_of(serial)
    card_id = add_card(store, serial, balance)
    nas = nas_id(store)
    now = EPOCH
    for n, c in enumerate(calls):
        now += timedelta(seconds=1000)
        result = store.authorize(  # card number + PIN
            AuthRequest(
                nas_id=nas,
                user_name=str(serial),
                password=pin,
                calling_number="1555",
                called_number="441234",
                acct_session_id=f"{serial}-{n}",
            ),
            now,
        )
        if n == 0 and balance >= cost(UK, 30):
            assert isinstance(result, Accepted), result  # the card's first call is always granted
        if not isinstance(result, Accepted):
            continue
        with store.db.transaction() as s:
            held = s.get(Card, card_id)
            assert held is not None
            # the grant is affordable from what the card held when it was made
            assert cost(UK, result.session_seconds) <= result.available_amount
        token = result.token if c["echo_class"] else None
        base = {
            "nas_id": nas,
            "token": token,
            "acct_session_id": f"{serial}-{n}",
            "calling_number": "1555",
            "called_number": "441234",
        }
        if c["start"]:
            store.account(AcctEvent(status=AcctStatus.START, event_at=now, **base), now)
        for progress in c["interims"]:
            store.account(
                AcctEvent(
                    status=AcctStatus.INTERIM, event_at=now, session_seconds=progress, **base
                ),
                now,
            )
        for _ in range(c["stops"]):
            store.account(
                AcctEvent(
                    status=AcctStatus.STOP,
                    event_at=now + timedelta(seconds=c["duration"]),
                    session_seconds=c["duration"],
                    **base,
                ),
                now + timedelta(seconds=c["duration"]),
            )
    store.reap(now + timedelta(days=1))  # closes every call whose Stop was lost
    with store.db.transaction() as s:
        final = s.get(Card, card_id)
        assert final is not None
        cdr_total = s.scalar(
            select(func.coalesce(func.sum(Cdr.cost), 0)).where(Cdr.card_id == card_id)
        )
        ledger_total = s.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0))
            .where(LedgerEntry.card_id == card_id)
            .where(LedgerEntry.kind == "call")
        )
        cdrs = s.scalar(select(func.count(Cdr.id)).where(Cdr.card_id == card_id))
    assert Decimal(cdr_total) == balance - final.balance
    assert Decimal(ledger_total) == -Decimal(cdr_total)
    assert cdrs <= len(calls)  # never two CDRs for one call
