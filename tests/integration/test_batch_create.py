"""Batch creation through :meth:`Admin.create_batch` on both write paths: SQLite's ``executemany``
and PostgreSQL's ``COPY``. Small chunks so a batch spans several; the stored rows must be the
same on both (one creation ledger entry per card, contiguous serials, hashes of the exported
PINs), a PIN already issued is never issued again, and a failure rolls everything back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cli_support import Ctl, make_group
from sqlalchemy import func, select

import billing.storage.admin as admin_module
from billing.pins import PinFormat, luhn_check_digit, pin_hash
from billing.storage.admin import Admin, BatchInfo
from billing.storage.models import Batch, Card, LedgerEntry

NOW = datetime.fromisoformat("2026-11-27T10:30:15.123456")
KEY = b"k" * 32


class Sink:
    """An export sink that keeps what it is given, and can fail on a given chunk."""

    def __init__(self, fail_on_chunk: int | None = None) -> None:
        self.rows: list[tuple[str, str]] = []
        self.chunks = 0
        self.finished = False
        self.fail_on_chunk = fail_on_chunk

    def write_cards(self, batch: BatchInfo, cards: Sequence[tuple[str, str]]) -> None:
        self.chunks += 1
        if self.chunks == self.fail_on_chunk:
            raise OSError("disk full")
        self.rows.extend(cards)

    def finish(self) -> None:
        self.finished = True


def create(ctl: Ctl, group: str, count: int, sink: Sink, **kw: Any) -> BatchInfo:
    args: dict[str, Any] = {
        "rate_group": group,
        "card_type": "rechargeable",
        "value": "7.25",
        "count": count,
        "pin_key": KEY,
        "now": NOW,
        "validity_days": 30,
        "grace_days": 3,
        "expires_on": date(2099, 12, 31),
        "max_calls": 2,
        "activation": "first-use",
        "note": 'a "quoted", note',
        "export": sink,
        "chunk_size": 7,
    }
    args.update(kw)
    return Admin(ctl.db).create_batch(**args)


def test_chunked_batch_rows(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    progress: list[int] = []
    sink = Sink()
    batch = create(ctl, group, 50, sink, progress=progress.append)
    assert progress == [7, 14, 21, 28, 35, 42, 49, 50]
    assert sink.finished and sink.chunks == 8
    first, last = int(batch.first_serial), int(batch.last_serial)
    assert last - first + 1 == 50
    assert [int(serial) for serial, _ in sink.rows] == list(range(first, last + 1))
    by_serial = dict(sink.rows)
    assert len(set(by_serial.values())) == 50

    with ctl.db.transaction() as s:
        stored = s.get(Batch, batch.id)
        assert stored is not None and stored.note == 'a "quoted", note'
        cards = s.scalars(select(Card).where(Card.batch_id == batch.id).order_by(Card.serial))
        cards = list(cards)
        assert [c.serial for c in cards] == list(range(first, last + 1))
        assert len({c.id for c in cards}) == 50
        for c in cards:
            assert c.pin_hash == pin_hash(KEY, by_serial[str(c.serial)])
            assert (c.card_type, c.state, c.locked, c.lock_reason) == (
                "rechargeable",
                "inactive",
                False,
                None,
            )
            assert (c.balance, c.currency, c.rate_group_id) == (
                Decimal("7.25"),
                "USD",
                stored.rate_group_id,
            )
            assert (c.max_calls, c.activation_mode, c.validity_days, c.grace_days) == (
                2,
                "first-use",
                30,
                3,
            )
            assert c.expires_at == datetime.fromisoformat("2099-12-31T23:59:59")
            assert (c.activated_at, c.first_used_at, c.failed_pin_count) == (None, None, 0)
            assert c.created_at == NOW
        entries = list(
            s.scalars(
                select(LedgerEntry)
                .join(Card, Card.id == LedgerEntry.card_id)
                .where(Card.batch_id == batch.id)
            )
        )
        assert sorted(e.card_id for e in entries) == sorted(c.id for c in cards)
        for e in entries:
            assert (e.kind, e.amount, e.balance_after, e.cdr_id, e.note, e.created_at) == (
                "creation",
                Decimal("7.25"),
                Decimal("7.25"),
                None,
                "",
                NOW,
            )


def test_no_expiry_and_zero_value(ctl: Ctl, tmp_path: Path) -> None:
    """NULLs and a zero balance (unlimited cards) go through COPY as they do through INSERT."""
    group = make_group(ctl, tmp_path)
    batch = create(
        ctl, group, 10, Sink(), card_type="unlimited", value="0", expires_on=None, note=""
    )
    with ctl.db.transaction() as s:
        rows = s.execute(
            select(Card.balance, Card.expires_at, Card.validity_days).where(
                Card.batch_id == batch.id
            )
        ).all()
        assert rows == [(Decimal("0"), None, 30)] * 10
        amounts = s.scalars(
            select(LedgerEntry.amount)
            .join(Card, Card.id == LedgerEntry.card_id)
            .where(Card.batch_id == batch.id)
        ).all()
        assert amounts == [Decimal("0")] * 10


def test_issued_pins_are_never_issued_again(
    ctl: Ctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each draw of the generator starts with PINs already issued, by an older batch and by
    an earlier chunk of the same batch; only new PINs are issued, and still exactly ``count``."""
    group = make_group(ctl, tmp_path)
    old = Sink()
    create(ctl, group, 5, old, pin_length=16, pin_prefix="99")
    old_pins = [pin for _, pin in old.rows]
    fmt = PinFormat(16, "99")
    numbers = itertools.count(1)
    drawn: list[str] = []

    def generate(f: PinFormat, count: int) -> Iterator[str]:
        assert f == fmt
        repeats = [*old_pins[:2], *drawn[-2:]][: count - 1]  # at least one new PIN per draw
        new = []
        for _ in range(count - len(repeats)):
            payload = f"99{next(numbers):013d}"
            new.append(payload + luhn_check_digit(payload))
        drawn.extend(new)
        return iter(repeats + new)

    monkeypatch.setattr(admin_module, "generate_pins", generate)
    sink = Sink()
    batch = create(ctl, group, 30, sink, pin_length=16, pin_prefix="99")
    pins = [pin for _, pin in sink.rows]
    assert len(pins) == 30 == len(set(pins))
    assert not set(pins) & set(old_pins)
    with ctl.db.transaction() as s:
        hashes = s.scalars(select(Card.pin_hash)).all()
        assert len(hashes) == len(set(hashes))
        n = s.scalar(select(func.count(Card.id)).where(Card.batch_id == batch.id))
        assert n == 30


def test_failure_rolls_back_the_whole_batch(ctl: Ctl, tmp_path: Path) -> None:
    group = make_group(ctl, tmp_path)
    with ctl.db.transaction() as s:
        before = [s.scalar(select(func.count()).select_from(t)) for t in (Batch, Card, LedgerEntry)]
    with pytest.raises(OSError, match="disk full"):
        create(ctl, group, 30, Sink(fail_on_chunk=3))
    with ctl.db.transaction() as s:
        after = [s.scalar(select(func.count()).select_from(t)) for t in (Batch, Card, LedgerEntry)]
    assert after == before
    # and the next batch takes the serials the failed one would have had
    batch = create(ctl, group, 3, Sink())
    with ctl.db.transaction() as s:
        highest_before = s.scalar(select(func.max(Card.serial)).where(Card.batch_id != batch.id))
    assert int(batch.first_serial) == (highest_before or 1_000_000_000) + 1


def test_seen_filter() -> None:
    """The in-batch filter of the PostgreSQL path: never forgets, rarely imagines."""
    from hashlib import sha256

    from billing.storage.admin import _Seen

    seen = _Seen(10_000)
    hashes = [sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    first = [seen.add(h) for h in hashes[:10_000]]
    assert sum(not new for new in first) < 30  # about 1 in 400 at capacity, fewer before
    assert not any(seen.add(h) for h in hashes[:10_000])
    imagined = sum(not seen.add(h) for h in hashes[10_000:])
    assert imagined < 200  # up to twice the capacity: still rare
