"""A :class:`Store` on a fresh, migrated database, for tests that drive billing directly.

One NAS (``gw``), one rate group with the example UK rate (0.07/min, fee 0.05, 30/6) and one
batch; cards are made on demand with :func:`add_card`. Each test module makes its own ``store``
fixture with :func:`store_fixture`, so that every module gets its own databases (SQLite: a
temporary file; PostgreSQL: a uniquely named database, dropped at the end).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

import schema
from billing.calls import AuthRequest
from billing.domain import Limits
from billing.pins import luhn_check_digit, pin_hash
from billing.rating import Rate
from billing.storage.database import Database
from billing.storage.models import Batch, Card, NasClient, RateGroup, RateRow
from billing.storage.store import SecurityPolicy, SessionPolicy, Store

KEY = b"k" * 32
EPOCH = datetime(2026, 1, 1)  # noqa: DTZ001 - storage times are naive UTC
UK = Rate("44", Decimal("0.07"), Decimal("0.05"), 30, 6, 0)


def store_fixture(
    sessions: SessionPolicy, backends: tuple[str, ...] = ("sqlite", "postgres")
) -> Any:
    """A module's ``store`` fixture (``store = store_fixture(...)``): one database per backend."""

    @pytest.fixture(scope="module", params=list(backends))
    def store(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Store]:
        yield from _store_on(request, tmp_path_factory, sessions)

    return store


def _store_on(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sessions: SessionPolicy,
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
    yield Store(db, KEY, Limits(), SecurityPolicy(), sessions)
    db.dispose()


def pin_of(serial: int) -> str:
    """The PIN :func:`add_card` gives the card ``serial``."""
    return f"{serial}00" + luhn_check_digit(f"{serial}00")


def add_card(
    store: Store,
    serial: int,
    balance: Decimal,
    card_type: str = "rechargeable",
    state: str = "active",
    activation_mode: str = "manual",
    validity_days: int | None = None,
) -> int:
    """A card of the fixture's batch, its PIN :func:`pin_of` ``serial``; returns its id."""
    with store.db.transaction() as s:
        card = Card(
            serial=serial,
            batch_id=s.scalar(select(Batch.id)),
            pin_hash=pin_hash(KEY, pin_of(serial)),
            card_type=card_type,
            state=state,
            locked=False,
            balance=balance,
            currency="USD",
            rate_group_id=s.scalar(select(RateGroup.id)),
            max_calls=3,
            activation_mode=activation_mode,
            validity_days=validity_days,
            grace_days=0,
            failed_pin_count=0,
            created_at=EPOCH,
        )
        s.add(card)
        s.flush()
        return card.id


def nas_id(store: Store) -> int:
    with store.db.transaction() as s:
        found = s.scalar(select(NasClient.id).where(NasClient.name == "gw"))
        assert found is not None
        return found


def pin_request(nas: int, serial: int, acct_session_id: str) -> AuthRequest:
    """The Access-Request of a call to the UK from ``1555`` with the card's PIN as User-Name."""
    return AuthRequest(
        nas_id=nas,
        user_name=pin_of(serial),
        password=None,
        calling_number="1555",
        called_number="441234",
        acct_session_id=acct_session_id,
    )


def explain_as_served(conn: Any, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of ``statement`` exactly as the server sends it on the
    hot connection ``conn``: its prepared statement, with the plan that connection holds."""
    sql = conn._mogrify(conn._plan(statement, params), params).decode()
    assert sql.startswith("EXECUTE ")
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
    (plan,) = cursor.fetchone()[0]
    return dict(plan)


def plan_buffers(node: dict[str, Any]) -> int:
    """Pages an EXPLAIN (ANALYZE, BUFFERS) plan node and its children touched."""
    own = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
    return max(own, sum(plan_buffers(child) for child in node.get("Plans", ())))


def calls_sql(card: int, nas: int, state: str, count: int) -> str:
    """An INSERT of ``count`` calls of ``card`` in ``state``, their tokens ``plan-...``."""
    closed_at = "now()" if state == "closed" else "NULL"
    return (
        "INSERT INTO live_sessions (token, card_id, nas_id, state, auth_method, calling_number,"
        " called_number, rate_prefix, price_per_minute, connection_fee, first_increment,"
        " next_increment, grace_seconds, granted_seconds, reserved_amount, session_seconds,"
        " authorized_at, last_update_at, deadline_at, closed_at)"
        f" SELECT 'plan-{state}-' || g, {card}, {nas}, '{state}', 'pin', '1', '44', '44', 0.07,"
        f" 0, 30, 6, 0, 600, 0.7, 0, now(), now(), now() + interval '1 hour', {closed_at}"
        f" FROM generate_series(1, {count}) AS g"
    )
