"""Batches on the store, on SQLite and on PostgreSQL: many requests in one transaction
(:meth:`Store.process`) decide and bill exactly as they would one by one, whatever a batch
holds: several requests on one card, a Start and a Stop of one call, calls matched by Class and
by session key side by side, copies of one Stop; and a request the database refuses costs only
itself.

Money at the example rate (0.07/min, fee 0.05, 30/6): cost(125 s) = 0.1970; 5.00 buys 4242 s,
which reserve 4.9990.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from store_support import EPOCH, add_card, nas_id, pin_of, pin_request, store_fixture

from billing.calls import Accepted, AcctEvent, AcctStatus, Rejected
from billing.domain import RejectReason
from billing.storage.models import BindNumber, Card, Cdr, LedgerEntry
from billing.storage.store import BATCH, CARD_LOOKUPS, SessionPolicy, Store

store = store_fixture(SessionPolicy())
serials = itertools.count(8_000_000_001)


def granted(store: Store, serial: int, session: str) -> Accepted:
    result = store.authorize(pin_request(nas_id(store), serial, session), EPOCH)
    assert isinstance(result, Accepted), result
    return result


def event(
    store: Store, status: AcctStatus, session: str, token: str | None, seconds: int | None = None
) -> tuple[AcctEvent, object]:
    at = EPOCH + timedelta(seconds=seconds or 0)
    return (
        AcctEvent(
            nas_id=nas_id(store),
            status=status,
            event_at=at,
            token=token,
            acct_session_id=session,
            calling_number="1555",
            called_number="441234",
            session_seconds=seconds,
        ),
        at,
    )


def books(store: Store, card_id: int) -> tuple[Decimal, int, Decimal]:
    """The card's balance, its CDRs, and the sum of its call ledger entries."""
    with store.db.transaction() as s:
        balance = s.scalar(select(Card.balance).where(Card.id == card_id))
        cdrs = s.scalar(select(func.count(Cdr.id)).where(Cdr.card_id == card_id))
        ledger = s.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
                LedgerEntry.card_id == card_id, LedgerEntry.kind == "call"
            )
        )
    return Decimal(balance), int(cdrs), Decimal(ledger)


def test_requests_on_one_card_in_one_batch_never_spend_the_same_money(store: Store) -> None:
    """The first grant reserves nearly all of 5.00: the next requests in the same batch see
    that reservation, as they would in transactions of their own."""
    serial = next(serials)
    add_card(store, serial, Decimal("5.00"))
    nas = nas_id(store)
    auths, _ = store.process([(pin_request(nas, serial, f"one-{n}"), EPOCH) for n in range(3)], [])
    assert isinstance(auths[0], Accepted) and auths[0].session_seconds == 4242
    assert auths[1:] == [Rejected(RejectReason.INSUFFICIENT_BALANCE, str(serial))] * 2


def test_max_calls_counts_the_grants_of_the_batch(store: Store) -> None:
    serial = next(serials)
    add_card(store, serial, Decimal("500.00"))  # money enough: Max Calls (3) decides
    nas = nas_id(store)
    auths, _ = store.process([(pin_request(nas, serial, f"max-{n}"), EPOCH) for n in range(4)], [])
    assert [type(result) for result in auths] == [Accepted, Accepted, Accepted, Rejected]
    assert auths[3] == Rejected(RejectReason.IN_USE, str(serial))


def test_start_and_stop_of_one_call_in_one_batch(store: Store) -> None:
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("5.00"))
    token = granted(store, serial, "ss").token
    _, accts = store.process(
        [],
        [
            event(store, AcctStatus.START, "ss", token),
            event(store, AcctStatus.STOP, "ss", token, 125),
            event(store, AcctStatus.STOP, "ss", token, 125),  # a copy with a new Identifier
        ],
    )
    assert [result.outcome for result in accts] == ["started", "billed", "duplicate"]  # type: ignore[union-attr]
    assert books(store, card_id) == (Decimal("4.8030"), 1, Decimal("-0.1970"))


def test_calls_matched_by_class_and_by_session_key_on_one_card(store: Store) -> None:
    """One Stop echoes Class (read with the batch), the other does not (matched on its own,
    after): both debit the same card, neither overwrites the other's debit."""
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("100.00"))  # two grants of 3 hours
    first = granted(store, serial, "by-class").token
    granted(store, serial, "by-key")
    store.account(event(store, AcctStatus.START, "by-key", None)[0], EPOCH)
    _, accts = store.process(
        [],
        [
            event(store, AcctStatus.STOP, "by-key", None, 125),
            event(store, AcctStatus.STOP, "by-class", first, 125),
        ],
    )
    assert [result.outcome for result in accts] == ["billed", "billed"]  # type: ignore[union-attr]
    assert books(store, card_id) == (Decimal("99.6060"), 2, Decimal("-0.3940"))


def test_an_authorization_and_a_stop_on_one_card_in_one_batch(store: Store) -> None:
    serial = next(serials)
    card_id = add_card(store, serial, Decimal("5.00"))
    token = granted(store, serial, "first").token
    auths, accts = store.process(
        [(pin_request(nas_id(store), serial, "second"), EPOCH + timedelta(seconds=60))],
        [event(store, AcctStatus.STOP, "first", token, 125)],
    )
    # The authorization is decided first, while the first call still holds its reservation.
    assert auths == [Rejected(RejectReason.INSUFFICIENT_BALANCE, str(serial))]
    assert accts[0].outcome == "billed"  # type: ignore[union-attr]
    assert books(store, card_id) == (Decimal("4.8030"), 1, Decimal("-0.1970"))
    # Released: the next authorization gets what is left.
    assert granted(store, serial, "third").session_seconds == 4074


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_request_the_database_refuses_costs_only_itself(store: Store) -> None:
    """A number too wide for its column (the wire layer refuses it earlier): PostgreSQL
    refuses the batch's transaction, and each request is tried again on its own."""
    good, other = next(serials), next(serials)
    good_id = add_card(store, good, Decimal("5.00"))
    other_id = add_card(store, other, Decimal("5.00"))
    nas = nas_id(store)
    wide = replace(pin_request(nas, other, "wide"), called_number="44" + "1" * 40)
    auths, _ = store.process([(pin_request(nas, good, "good"), EPOCH), (wide, EPOCH)], [])
    assert isinstance(auths[0], Accepted)
    assert isinstance(auths[1], DBAPIError)
    with store.db.engine.connect() as conn:
        grants = dict(
            conn.execute(
                text(
                    "SELECT card_id, count(*) FROM live_sessions "
                    "WHERE card_id IN (:good, :other) GROUP BY card_id"
                ),
                {"good": good_id, "other": other_id},
            ).all()
        )
    assert grants == {good_id: 1}  # the good grant committed on its own, the wide one nowhere
    assert isinstance(store.authorize(pin_request(nas, other, "ok"), EPOCH), Accepted)


def test_a_change_to_the_rates_reaches_the_next_authorization(store: Store) -> None:
    """The server rates from its copy of the group's rates; any change to them, even by hand in
    SQL, bumps the group's version (a trigger), so the next authorization sees the new price."""
    first, second, third = next(serials), next(serials), next(serials)
    for serial in (first, second, third):
        add_card(store, serial, Decimal("5.00"))
    assert granted(store, first, "before").session_seconds == 4242  # 0.07/min, loads the copy
    with store.db.engine.begin() as conn:
        conn.execute(text("UPDATE rates SET price_per_minute = 0.14 WHERE prefix = '44'"))
    assert granted(store, second, "dearer").session_seconds == 2118  # 0.14/min: 30 + 348 x 6
    with store.db.engine.begin() as conn:
        group = conn.execute(text("SELECT rate_group_id FROM rates")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO rates (rate_group_id, prefix, description, price_per_minute, "
                "connection_fee, first_increment, next_increment, grace_seconds) "
                "VALUES (:g, '4412', '', 0.07, 0.05, 30, 6, 0)"
            ),
            {"g": group},
        )
    assert granted(store, third, "longer").session_seconds == 4242  # 441234: the new 4412
    with store.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM rates WHERE prefix = '4412'"))
        conn.execute(text("UPDATE rates SET price_per_minute = 0.07 WHERE prefix = '44'"))


def test_each_set_of_lookups_finds_exactly_the_cards_it_names(store: Store) -> None:
    """A batch reads its cards with the statement for the lookups it makes (PIN hashes, card
    numbers, bound ANIs, calls' tokens): every combination finds the cards named, and only
    those, with the bound ANI they were named by."""
    by_pin, by_serial, by_ani, by_token = (next(serials) for _ in range(4))
    ids = {
        "pin_hashes": add_card(store, by_pin, Decimal("5.00")),
        "serials": add_card(store, by_serial, Decimal("5.00")),
        "anis": add_card(store, by_ani, Decimal("5.00")),
        "tokens": add_card(store, by_token, Decimal("5.00")),
    }
    ani = f"1777{by_ani}"
    with store.db.transaction() as s:
        s.add(BindNumber(card_id=ids["anis"], ani=ani, created_at=EPOCH))
    values = {
        "pin_hashes": [store._hash_pin(pin_of(by_pin)), "0" * 64],  # one hash matches nothing
        "serials": [by_serial, 1],
        "anis": [ani, "1999"],
        "tokens": [granted(store, by_token, "lookups").token, "no-such-token"],
    }
    batch = BATCH[not store.db.is_sqlite]
    # The reads: the authorizations' lookups (a call's card is read with the call).
    assert len(batch.cards) == 2 ** (len(CARD_LOOKUPS) - 1) - 1
    for lookups, statement in batch.cards.items():
        assert "tokens" not in lookups
        params: dict[str, Any] = {name: values[name] for name in lookups}
        if batch.locks is not None:
            params["now"] = EPOCH  # PostgreSQL reads the cards' open calls with them
        rows = store.db.run(lambda conn, s=statement, p=params: conn.execute(s, p).all())
        assert sorted((r.id, r.bound_ani) for r in rows) == sorted(
            (ids[name], ani if name == "anis" else None) for name in lookups
        ), sorted(lookups)
    if batch.locks is None:
        return  # SQLite: no row locks
    assert len(batch.locks) == 2 ** len(CARD_LOOKUPS) - 1
    for lookups, statement in batch.locks.items():
        params = {name: values[name] for name in lookups}
        rows = store.db.run(lambda conn, s=statement, p=params: conn.execute(s, p).all())
        assert sorted(r.id for r in rows) == sorted(ids[name] for name in lookups), lookups
