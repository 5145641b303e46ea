"""Property: whatever sequence of calls a card makes, the money adds up to the last decimal.

For random call sequences (authorize, maybe Start, Interims, Stop, duplicated Stops, Stops
without Start, grants that are never used) on one card, on SQLite and on PostgreSQL:
sum of CDR costs == balance change == minus the sum of call ledger entries, and no grant ever
promised more than the balance could pay at the time it was made.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import schema
from billing.calls import Accepted, AcctEvent, AcctStatus, AuthRequest
from billing.domain import Limits
from billing.pins import luhn_check_digit, pin_hash
from billing.rating import Rate, cost
from billing.storage.database import Database
from billing.storage.models import Batch, Card, Cdr, LedgerEntry, NasClient, RateGroup, RateRow
from billing.storage.store import SecurityPolicy, SessionPolicy, Store

KEY = b"k" * 32
EPOCH = datetime(2026, 1, 1)  # noqa: DTZ001 - storage times are naive UTC
UK = Rate("44", Decimal("0.07"), Decimal("0.05"), 30, 6, 0)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'p.sqlite3'}"
    schema.upgrade(url)
    db = Database.from_url(url)
    with db.transaction() as s:
        s.add(
            NasClient(
                name="gw",
                address="127.0.0.1",
                secret="x",
                profile="generic",
                require_message_authenticator="no",
                message_authenticator_seen=False,
                boot_epoch=0,
                created_at=EPOCH,
            )
        )
        group = RateGroup(name="g", currency="USD", created_at=EPOCH)
        s.add(group)
        s.flush()
        s.add(
            RateRow(
                rate_group_id=group.id,
                prefix=UK.prefix,
                description="",
                price_per_minute=UK.price_per_minute,
                connection_fee=UK.connection_fee,
                first_increment=UK.first_increment,
                next_increment=UK.next_increment,
                grace_seconds=UK.grace_seconds,
            )
        )
        s.add(
            Batch(
                card_type="rechargeable",
                face_value=Decimal(0),
                currency="USD",
                rate_group_id=group.id,
                validity_days=None,
                grace_days=0,
                expires_on=None,
                max_calls=3,
                pin_length=12,
                pin_prefix="",
                activation_mode="manual",
                card_count=0,
                first_serial=1,
                last_serial=1,
                note="",
                created_at=EPOCH,
            )
        )
    yield Store(db, KEY, Limits(), SecurityPolicy(), SessionPolicy(stale_margin_seconds=60))
    db.dispose()


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
    pin = f"{serial}00" + luhn_check_digit(f"{serial}00")
    with store.db.transaction() as s:
        batch_id = s.scalar(select(Batch.id))
        group_id = s.scalar(select(RateGroup.id))
        nas_id = s.scalar(select(NasClient.id))
        card = Card(
            serial=serial,
            batch_id=batch_id,
            pin_hash=pin_hash(KEY, pin),
            card_type="rechargeable",
            state="active",
            locked=False,
            balance=balance,
            currency="USD",
            rate_group_id=group_id,
            max_calls=3,
            activation_mode="manual",
            validity_days=None,
            grace_days=0,
            failed_pin_count=0,
            created_at=EPOCH,
        )
        s.add(card)
        s.flush()
        card_id = card.id
    now = EPOCH
    for n, c in enumerate(calls):
        now += timedelta(seconds=1000)
        result = store.authorize(  # card number + PIN
            AuthRequest(
                nas_id=nas_id,
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
            "nas_id": nas_id,
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
