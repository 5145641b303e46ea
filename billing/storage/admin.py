"""The operator's operations: NAS clients, rate groups and rates, card batches, cards, bind
numbers, live sessions and the Phone Card Bill.

Every public method of :class:`Admin` is one transaction (``Database.transaction()``), takes plain
values (and ``now``, a naive UTC datetime, when time matters; nothing here reads the clock) and
returns frozen dataclasses, never ORM objects. Every operator mistake (an unknown name or serial,
a duplicate, a malformed address, a refused recharge...) raises :class:`AdminError` with a
one-line message meant to be shown as is.

Decisions written down here:

- NAS addresses are stored as normalized CIDR (``10.0.0.1`` is stored ``10.0.0.1/32``); a CIDR
  with host bits set (``10.0.0.5/24``) is refused, naming the network that was probably meant.
  Two NAS clients may overlap (the server picks the most specific), but not share one network.
- Serials are numbers allocated contiguously per batch after the highest serial ever issued,
  the first one being 1000000001. On PostgreSQL batch creation takes a transaction-scoped
  advisory lock so two concurrent batches neither collide on serials nor on PIN hashes; SQLite
  transactions are ``BEGIN IMMEDIATE`` and already serialize.
- A batch is written in chunks (PINs generated, hashed, checked against the database, the
  cards inserted, then their ``creation`` ledger entries with one ``INSERT ... SELECT``), and
  each chunk's (serial, PIN) rows are handed to an export sink while the transaction is still
  open: nothing grows with the batch size (but a 2 MB-per-million-cards filter on PostgreSQL).
  A background thread draws and hashes the PINs one chunk ahead. On PostgreSQL the cards go
  in with ``COPY`` (50,000 per chunk) and that thread also checks the new hashes against the
  cards on a connection of its own; on SQLite they go in with Core ``executemany`` (5,000 per
  chunk) after a check on the batch's connection. Within a chunk serials follow the PIN
  hashes' order. If anything fails, including the export, the whole batch rolls back (the
  caller deletes the partial export file).
- An absolute expiry date means the card stops working at the end of that day (23:59:59 UTC).
- Activation only moves ``inactive`` cards to ``active``; validity still starts at first use.
  Lock, unlock and activate choose cards the same way: serials, a batch, or a serial range.
  A bulk lock leaves already locked cards (and their reason) alone; unlock never unlocks a card
  whose balance was transferred away.
- Recharge (see :meth:`Admin.recharge`) is for ``rechargeable`` cards only; it is allowed in the
  grace period after expiry and reactivates the card, and refused once the grace period is over.
- Transfer (see :meth:`Admin.transfer`) moves a lost card's whole balance to another card of the
  same currency; the old card ends ``retired``, locked with reason ``transferred``, balance 0.
- Batch figures come from the ledger: value issued is the sum of ``creation`` entries, recharges
  the sum of ``recharge`` entries; value remaining is the sum of the cards' balances.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import queue
import re
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import (
    DateTime,
    String,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from billing.domain import ActivationMode, CardState, CardType
from billing.money import DEFAULT_PLACES, ZERO, MoneyError, parse_amount, round_money
from billing.numbers import NumberRules, is_ascii_digits, normalize_number
from billing.pins import PinFormat, PinSpaceError, check_density, generate_pins, make_pin_hasher
from billing.rating import Rate
from billing.settings import Settings
from billing.storage.database import Database
from billing.storage.models import (
    Batch,
    BindNumber,
    Card,
    Cdr,
    LedgerEntry,
    LiveSession,
    NasClient,
    RateGroup,
    RateRow,
)
from billing.storage.rates import find_rate

NAS_PROFILES = ("generic", "cisco")
MESSAGE_AUTHENTICATOR_POLICIES = ("auto", "yes", "no")
FIRST_SERIAL = 1_000_000_001
CHUNK_SIZE = 5_000
COPY_CHUNK_SIZE = 50_000  # cards per COPY on PostgreSQL
_IN_CHUNK = 900  # bind parameters per IN (...) query, below SQLite's historical limit of 999
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_BATCH_LOCK_KEY = 0x70_72_65_70  # pg_advisory_xact_lock key for batch creation ("prep")
OPEN_SESSION_STATES = ("authorized", "started")
TRANSFERRED = "transferred"
"""The lock reason of a card whose balance was moved to another card."""


class AdminError(ValueError):
    """An operator mistake, with a one-line message that can be shown as is."""


# ---------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class NasInfo:
    id: int
    name: str
    address: str
    profile: str
    require_message_authenticator: str
    message_authenticator_seen: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RateGroupInfo:
    id: int
    name: str
    currency: str
    rate_count: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RateInfo:
    rate_group: str
    currency: str
    prefix: str
    description: str
    price_per_minute: Decimal
    connection_fee: Decimal
    first_increment: int
    next_increment: int
    grace_seconds: int


@dataclass(frozen=True, slots=True)
class RateLookup:
    rate_group: str
    number: str  # normalized
    rate: RateInfo | None


@dataclass(frozen=True, slots=True)
class ImportResult:
    rate_group: str
    inserted: int
    updated: int
    deleted: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True, slots=True)
class BatchInfo:
    id: int
    card_type: str
    value: Decimal
    currency: str
    rate_group: str
    count: int
    first_serial: str
    last_serial: str
    validity_days: int | None
    grace_days: int
    expires_on: date | None
    max_calls: int
    pin_length: int
    pin_prefix: str
    activation: str
    note: str
    created_at: datetime


class ExportSink(Protocol):
    """Receives each chunk of a new batch's (serial, PIN) pairs, inside the transaction."""

    def write_cards(self, batch: BatchInfo, cards: Sequence[tuple[str, str]]) -> None: ...

    def finish(self) -> None:
        """Called once all cards are written, just before the transaction commits."""


@dataclass(frozen=True, slots=True)
class CardInfo:
    serial: str
    state: str  # effective: "locked" when locked, else the stored state
    stored_state: str
    locked: bool
    lock_reason: str | None
    type: str
    balance: Decimal
    currency: str
    max_calls: int
    activation: str
    validity_days: int | None
    grace_days: int
    expires_at: datetime | None
    activated_at: datetime | None
    first_used_at: datetime | None
    created_at: datetime
    batch_id: int
    rate_group: str
    failed_pin_count: int
    bound_anis: tuple[str, ...]
    live_calls: int


@dataclass(frozen=True, slots=True)
class ActivationResult:
    matched: int  # cards selected
    activated: int  # of those, inactive cards now active


@dataclass(frozen=True, slots=True)
class BulkResult:
    matched: int  # cards selected
    changed: int  # of those, cards the operation changed


@dataclass(frozen=True, slots=True)
class RechargeResult:
    serial: str
    amount: Decimal
    balance: Decimal
    currency: str
    state: str
    expires_at: datetime | None = None
    reactivated: bool = False  # an expired card (in its grace period) made active again


@dataclass(frozen=True, slots=True)
class TransferResult:
    from_serial: str
    to_serial: str
    amount: Decimal
    currency: str
    to_balance: Decimal
    to_state: str
    numbers: tuple[str, ...] = ()  # the bound numbers (ANIs) that moved with the balance


@dataclass(frozen=True, slots=True)
class LedgerRow:
    created_at: datetime
    kind: str
    amount: Decimal
    balance_after: Decimal
    note: str


@dataclass(frozen=True, slots=True)
class CardHistory:
    serial: str
    currency: str
    balance: Decimal
    rows: tuple[LedgerRow, ...]


@dataclass(frozen=True, slots=True)
class BatchSummary:
    id: int
    card_type: str
    value: Decimal
    currency: str
    rate_group: str
    count: int
    first_serial: str
    last_serial: str
    value_remaining: Decimal
    created_at: datetime
    note: str


CARD_STATES_SHOWN = ("inactive", "active", "locked", "expired", "exhausted", "retired")
"""Effective states, in lifecycle order: "locked" stands for any locked card."""


@dataclass(frozen=True, slots=True)
class BatchDetail:
    batch: BatchInfo
    states: tuple[tuple[str, int], ...]  # effective state -> cards (all of CARD_STATES_SHOWN)
    value_issued: Decimal  # sum of creation ledger entries
    recharges: Decimal  # sum of recharge entries
    call_revenue: Decimal  # minus the sum of call entries
    breakage: Decimal  # minus the sum of expiry entries (balances forfeited)
    transfers: Decimal  # net transfer entries (in minus out)
    adjustments: Decimal
    value_remaining: Decimal  # sum of balances


@dataclass(frozen=True, slots=True)
class BindInfo:
    serial: str
    ani: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LiveSessionInfo:
    id: int
    serial: str
    nas: str | None
    calling_number: str
    called_number: str
    granted_seconds: int
    reserved_amount: Decimal
    state: str
    authorized_at: datetime
    started_at: datetime | None
    elapsed_seconds: int | None


@dataclass(frozen=True, slots=True)
class CardBillRow:
    started_at: datetime
    calling_number: str
    called_number: str
    duration_seconds: int
    billed_seconds: int
    cost: Decimal
    balance_after: Decimal
    leg: str


@dataclass(frozen=True, slots=True)
class CardBill:
    serial: str
    currency: str
    from_date: date | None
    to_date: date | None
    rows: tuple[CardBillRow, ...]
    calls: int
    total_duration_seconds: int
    total_billed_seconds: int
    total_cost: Decimal


@dataclass(frozen=True, slots=True)
class DemoSeed:
    seeded: bool
    export_path: Path | None = None
    batch: BatchInfo | None = None
    nas: NasInfo | None = None
    rate_group: str | None = None
    serials: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------- helpers
def parse_serial(text: str | int) -> int:
    """A card serial as typed by the operator (digits only)."""
    raw = str(text).strip()
    if not is_ascii_digits(raw) or len(raw) > 18:
        raise AdminError(f"not a card serial: {raw!r} (serials are numbers)")
    return int(raw)


def normalize_nas_address(text: str) -> str:
    """An IP address or CIDR network in canonical CIDR form; AdminError otherwise."""
    raw = text.strip()
    try:
        return str(ipaddress.ip_network(raw, strict=True))
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise AdminError(f"not an IP address or CIDR network: {raw!r}") from None
    raise AdminError(f"{raw} has host bits set; did you mean {meant}?")


def end_of_day(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59))


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rowcount(result: Result[Any]) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _duplicate(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate" in text


def _nas_info(row: NasClient) -> NasInfo:
    return NasInfo(
        id=row.id,
        name=row.name,
        address=row.address,
        profile=row.profile,
        require_message_authenticator=row.require_message_authenticator,
        message_authenticator_seen=row.message_authenticator_seen,
        created_at=row.created_at,
    )


def _rate_info(group: RateGroup, row: RateRow) -> RateInfo:
    return RateInfo(
        rate_group=group.name,
        currency=group.currency,
        prefix=row.prefix,
        description=row.description,
        price_per_minute=row.price_per_minute,
        connection_fee=row.connection_fee,
        first_increment=row.first_increment,
        next_increment=row.next_increment,
        grace_seconds=row.grace_seconds,
    )


def _batch_info(batch: Batch, group_name: str) -> BatchInfo:
    return BatchInfo(
        id=batch.id,
        card_type=batch.card_type,
        value=batch.face_value,
        currency=batch.currency,
        rate_group=group_name,
        count=batch.card_count,
        first_serial=str(batch.first_serial),
        last_serial=str(batch.last_serial),
        validity_days=batch.validity_days,
        grace_days=batch.grace_days,
        expires_on=batch.expires_on,
        max_calls=batch.max_calls,
        pin_length=batch.pin_length,
        pin_prefix=batch.pin_prefix,
        activation=batch.activation_mode,
        note=batch.note,
        created_at=batch.created_at,
    )


class CsvCardExport:
    """Writes a batch export (``serial,pin,value,currency,expires_on``) to an open text file.

    This file is the one place a PIN is ever shown. :func:`open_export_file` creates it.
    """

    HEADER = ("serial", "pin", "value", "currency", "expires_on")

    def __init__(self, fh: io.TextIOBase, places: int = DEFAULT_PLACES) -> None:
        self._fh = fh
        self._writer = csv.writer(fh, lineterminator="\n")
        self._places = places
        self._header_written = False
        self.rows = 0

    def write_cards(self, batch: BatchInfo, cards: Sequence[tuple[str, str]]) -> None:
        if not self._header_written:
            self._writer.writerow(self.HEADER)
            self._header_written = True
        value = str(round_money(batch.value, self._places))
        expires = batch.expires_on.isoformat() if batch.expires_on else ""
        currency = batch.currency
        self._writer.writerows((serial, pin, value, currency, expires) for serial, pin in cards)
        self._fh.flush()
        self.rows += len(cards)

    def finish(self) -> None:
        self._fh.flush()
        fileno = getattr(self._fh, "fileno", None)
        if fileno is not None:
            try:
                os.fsync(fileno())
            except (OSError, io.UnsupportedOperation):
                pass


def open_export_file(path: Path, overwrite: bool = False) -> io.TextIOWrapper:
    """Create ``path`` with mode 0600 for a PIN export; refuse an existing file unless told."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise AdminError(f"{path} already exists; PIN exports are never overwritten") from None
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


# ---------------------------------------------------------------------------------- card writers
_Draw = list[tuple[str, str]]
"""(PIN hash, PIN) pairs with distinct hashes."""


def _draw(fmt: PinFormat, n: int, hasher: Callable[[str], str], avoid: Container[str]) -> _Draw:
    """``n`` new PINs (fewer if some hash is in ``avoid``), with their hashes."""
    drawn: dict[str, str] = {}
    for pin in generate_pins(fmt, n):
        h = hasher(pin)
        if h not in avoid:
            drawn[h] = pin
    return list(drawn.items())


def _fresh_pins(
    taken: Callable[[list[str]], set[str]],
    fmt: PinFormat,
    n: int,
    hasher: Callable[[str], str],
    first: _Draw | None = None,
) -> _Draw:
    """``n`` (hash, PIN) pairs whose hashes no card has yet (``taken`` asks the database),
    starting from the draw ``first`` when given; PINs found taken are drawn again."""
    chosen: dict[str, str] = {}
    candidates = first if first is not None else _draw(fmt, n, hasher, chosen)
    while True:
        used = taken([h for h, _pin in candidates])
        for h, pin in candidates:
            if h not in used:
                chosen[h] = pin
        if len(chosen) >= n:
            return list(chosen.items())[:n]
        candidates = _draw(fmt, n - len(chosen), hasher, chosen)


class _Seen:
    """The PIN hashes handed out so far in a batch, as a Bloom filter: 16 bits a hash, four
    probes, so a million hashes take 2 MB, and a hash never handed out is reported as seen
    about once in 400 times (its PIN is then just not used: nothing is lost but a draw)."""

    def __init__(self, capacity: int) -> None:
        self._bits = max(1024, 16 * capacity)
        self._table = bytearray((self._bits + 7) // 8)

    def add(self, pin_hash: str) -> bool:
        """Record ``pin_hash``; False if it may have been recorded before."""
        table, bits = self._table, self._bits
        # An HMAC-SHA256 in hex: four slices of 15 digits are four independent uniform numbers.
        probes = [int(pin_hash[i : i + 15], 16) % bits for i in (0, 15, 30, 45)]
        if all(table[p >> 3] & (1 << (p & 7)) for p in probes):
            return False
        for p in probes:
            table[p >> 3] |= 1 << (p & 7)
        return True


class _Draws:
    """Draws PINs and hashes them in a background thread, one chunk ahead of the writes.

    Generating and hashing a million PINs is seconds of Python; done here it overlaps with the
    database writing the previous chunk. Two ways to make sure a PIN is new:

    - with ``taken`` (PostgreSQL): the thread itself asks the database, on a connection of its
      own, which hashes cards already have, and keeps the hashes it handed out for this batch
      (not committed yet, so not visible to that connection) in a :class:`_Seen`. Every draw
      is then exactly its chunk's size of new PINs, and that check is off the path of the
      writes. The batch's advisory lock keeps other batches from adding cards meanwhile, and
      the unique index on ``pin_hash`` still refuses any duplicate.
    - without (SQLite, whose second connection would wait for the batch's write lock): the
      caller checks each draw with :func:`_fresh_pins` on the batch's own connection.

    At most two draws wait at a time.
    """

    def __init__(
        self,
        fmt: PinFormat,
        pin_key: bytes,
        sizes: Sequence[int],
        taken: Callable[[Any, list[str]], set[str]] | None = None,
        connect: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._queue: queue.Queue[_Draw | BaseException] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(fmt, make_pin_hasher(pin_key), sizes, taken, connect),
            name="pin-draws", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _run(
        self,
        fmt: PinFormat,
        hasher: Callable[[str], str],
        sizes: Sequence[int],
        taken: Callable[[Any, list[str]], set[str]] | None,
        connect: Callable[[], AbstractContextManager[Any]] | None,
    ) -> None:
        try:
            with connect() if connect is not None else nullcontext() as conn:
                seen = _Seen(sum(sizes))
                for n in sizes:
                    if taken is None:
                        item: _Draw = _draw(fmt, n, hasher, ())
                    else:
                        item = self._checked_draw(fmt, n, hasher, lambda h: taken(conn, h), seen)
                    if not self._put(item):
                        return
        except BaseException as exc:  # handed to the caller, which raises it
            self._put(exc)

    @staticmethod
    def _checked_draw(
        fmt: PinFormat,
        n: int,
        hasher: Callable[[str], str],
        taken: Callable[[list[str]], set[str]],
        seen: _Seen,
    ) -> _Draw:
        chosen: dict[str, str] = {}
        while len(chosen) < n:
            candidates = _draw(fmt, n - len(chosen), hasher, chosen)
            used = taken([h for h, _pin in candidates])
            for h, pin in candidates:
                if h not in used and seen.add(h):
                    chosen[h] = pin
        return list(chosen.items())

    def _put(self, item: _Draw | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> _Draw:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _chunk_sizes(count: int, size: int) -> list[int]:
    return [min(size, count - start) for start in range(0, count, size)]


_Export = Callable[[int, Sequence[tuple[str, str]]], None]
"""Hands (hash, PIN) pairs to the export, their serials from the given first one."""


class _CardWriter(Protocol):
    def write(self, first_serial: int, pins: _Draw, export: _Export) -> None:
        """Insert one card per (hash, PIN), serials from ``first_serial``, and their
        ``creation`` ledger entries; pass every pair to ``export`` once."""


def _insert_ledger(s: Session, batch_id: int, now: datetime, first_serial: int, n: int) -> None:
    """The ``creation`` ledger entries of the batch's cards ``first_serial`` and the ``n - 1``
    after it, selected from those cards by the database."""
    s.execute(
        insert(cast(Table, LedgerEntry.__table__)).from_select(
            ["card_id", "kind", "amount", "balance_after", "note", "created_at"],
            select(
                Card.id,
                literal(LedgerKind.CREATION, String()),
                Card.balance,
                Card.balance,
                literal("", String()),
                literal(now, DateTime()),
            )
            .where(Card.batch_id == batch_id)
            .where(Card.serial.between(first_serial, first_serial + n - 1)),
        )
    )


class _InsertCardWriter:
    """Core ``executemany`` of the cards, then ``INSERT ... SELECT`` of their ledger entries
    (SQLite: as fast as it gets there, and what any other database falls back to)."""

    def __init__(self, s: Session, common: dict[str, Any], now: datetime) -> None:
        self.s = s
        self.common = common
        self.now = now
        self.batch_id = common["batch_id"]

    def taken(self, hashes: list[str]) -> set[str]:
        """Those of ``hashes`` that some card (of any batch, this one included) already has."""
        found: set[str] = set()
        for part in _chunks(hashes, _IN_CHUNK):
            found.update(self.s.scalars(select(Card.pin_hash).where(Card.pin_hash.in_(part))))
        return found

    def write(self, first_serial: int, pins: _Draw, export: _Export) -> None:
        common = self.common
        rows = [
            {**common, "serial": first_serial + i, "pin_hash": h}
            for i, (h, _pin) in enumerate(pins)
        ]
        self.s.execute(insert(cast(Table, Card.__table__)), rows)
        del rows
        _insert_ledger(self.s, self.batch_id, self.now, first_serial, len(pins))
        export(first_serial, pins)


def _csv_value(value: object) -> str:
    """A value as PostgreSQL's COPY ... (FORMAT csv) reads it: None is NULL (unquoted empty),
    text is quoted (so "" is the empty string)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (int, datetime)):
        return str(value)  # datetime: 'YYYY-MM-DD HH:MM:SS[.ffffff]', naive UTC as stored
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


_TAKEN_PG = (
    "SELECT h.pin_hash FROM unnest(%s::text[]) AS h(pin_hash) CROSS JOIN LATERAL "
    "(SELECT 1 FROM cards c WHERE c.pin_hash = h.pin_hash LIMIT 1) AS found"
)


def _taken_pg(cur: Any, hashes: list[str]) -> set[str]:
    """Those of ``hashes`` that a card has, on PostgreSQL (``cur``: a psycopg2 cursor).

    One array literal, not thousands of parameters (hashes are hex digits: nothing to escape),
    and one probe of the unique index per hash: ``pin_hash = ANY(array)`` is planned as a scan
    of every card once the table is large.
    """
    cur.execute(_TAKEN_PG, ("{" + ",".join(hashes) + "}",))
    return {row[0] for row in cur}


def _taken_on(conn: Any, hashes: list[str]) -> set[str]:
    """:func:`_taken_pg` on a SQLAlchemy connection of its own."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        return _taken_pg(cursor, hashes)
    finally:
        cursor.close()


class _Stream:
    """A file for ``cursor.copy_expert`` whose text is made while COPY reads it, so PostgreSQL
    inserts one block of rows while the next is being formatted.

    psycopg2 turns an exception raised by ``read`` into a cancelled COPY; :meth:`copy` raises
    the original exception instead (a full disk under the export stays an OSError)."""

    def __init__(self, blocks: Iterator[str]) -> None:
        self._blocks = blocks
        self._error: BaseException | None = None

    def read(self, size: int = -1) -> str:
        try:
            return next(self._blocks, "")
        except BaseException as exc:
            self._error = exc
            raise

    def copy(self, cur: Any, sql: str) -> None:
        try:
            cur.copy_expert(sql, self)
        except Exception:
            if self._error is not None:
                raise self._error from None
            raise


_STREAM_ROWS = 2_000  # rows per block of COPY text


class _CopyCardWriter:
    """PostgreSQL: each chunk of cards loaded with one ``COPY cards ... FROM STDIN`` on the
    session's own connection (so in the batch's transaction), its rows streamed as they are
    formatted (PostgreSQL inserts a block while the next is made) and the export written as
    they stream; then the chunk's ledger entries with one ``INSERT ... SELECT``.

    The card ids are given (see :meth:`_ids`): with every column given, COPY evaluates no
    volatile default and inserts rows in batches instead of one by one.
    """

    _CARD_TAIL = (
        "batch_id", "card_type", "state", "locked", "lock_reason", "balance", "currency",
        "rate_group_id", "max_calls", "activation_mode", "validity_days", "grace_days",
        "expires_at", "activated_at", "first_used_at", "failed_pin_count", "created_at",
    )  # fmt: skip

    def __init__(self, s: Session, common: dict[str, Any], now: datetime) -> None:
        self.s = s
        self.now = now
        self.batch_id = common["batch_id"]
        # psycopg2's connection, in the transaction SQLAlchemy began on it
        self.raw: Any = s.connection().connection.dbapi_connection
        self.card_tail = ",".join(_csv_value(common[c]) for c in self._CARD_TAIL)
        self.copy_cards = (
            "COPY cards (id, serial, pin_hash, " + ", ".join(self._CARD_TAIL) + ") "
            "FROM STDIN WITH (FORMAT csv)"
        )

    def _ids(self, cur: Any, n: int) -> range:
        """``n`` new card ids, as one block of the cards' sequence moved past in one statement.

        Only batch creation inserts cards, and batches are serialized by the advisory lock, so
        nothing else draws from that sequence meanwhile; a card inserted some other way at that
        very moment would collide with the block on the primary key and fail the batch (no
        card is ever written twice)."""
        cur.execute(
            "WITH seq AS (SELECT pg_get_serial_sequence('cards', 'id') AS name), "
            "block AS (SELECT name, nextval(name) AS first FROM seq) "
            "SELECT first, setval(name, first + %s - 1) FROM block",
            (n,),
        )
        first, last = cur.fetchone()
        return range(first, last + 1)

    def write(self, first_serial: int, pins: _Draw, export: _Export) -> None:
        tail = self.card_tail

        def card_blocks() -> Iterator[str]:
            for start in range(0, len(pins), _STREAM_ROWS):
                part = pins[start : start + _STREAM_ROWS]
                serial = first_serial + start
                yield "".join(
                    f"{card_id},{serial + i},{h},{tail}\n"
                    for i, (card_id, (h, _pin)) in enumerate(
                        zip(ids[start : start + len(part)], part, strict=True)
                    )
                )
                export(serial, part)

        with self.raw.cursor() as cur:
            ids = self._ids(cur, len(pins))
            _Stream(card_blocks()).copy(cur, self.copy_cards)
        # The ledger entries from the cards just written, in the database: faster than a COPY
        # of them (whose own ids would be drawn one nextval at a time), and nothing to send.
        _insert_ledger(self.s, self.batch_id, self.now, first_serial, len(pins))


# ---------------------------------------------------------------------------------- service
class Admin:
    """The operator's operations on one database."""

    def __init__(
        self,
        db: Database,
        *,
        places: int = DEFAULT_PLACES,
        number_rules: NumberRules | None = None,
        max_bind_numbers: int = 5,
    ) -> None:
        self.db = db
        self.places = places
        self.number_rules = number_rules or NumberRules()
        self.max_bind_numbers = max_bind_numbers

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Admin:
        return cls(
            db,
            places=settings.money_places,
            number_rules=settings.number_rules,
            max_bind_numbers=int(settings["cards"]["max_bind_numbers"]),
        )

    # ----------------------------------------------------------------- NAS clients
    def nas_add(
        self,
        name: str,
        address: str,
        secret: str,
        now: datetime,
        profile: str = "generic",
        require_message_authenticator: str = "auto",
    ) -> NasInfo:
        name = name.strip()
        if not _NAME.match(name):
            raise AdminError(
                f"bad NAS name {name!r}: use up to 64 letters, digits, '.', '_' or '-'"
            )
        network = normalize_nas_address(address)
        if not secret or not secret.strip():
            raise AdminError("the shared secret must not be empty")
        if len(secret) > 128:
            raise AdminError("the shared secret is longer than 128 characters")
        if profile not in NAS_PROFILES:
            raise AdminError(f"unknown profile {profile!r}: use one of {', '.join(NAS_PROFILES)}")
        if require_message_authenticator not in MESSAGE_AUTHENTICATOR_POLICIES:
            raise AdminError(
                "require_message_authenticator must be one of "
                + ", ".join(MESSAGE_AUTHENTICATOR_POLICIES)
            )
        with self.db.transaction() as s:
            if s.scalar(select(NasClient.id).where(NasClient.name == name)) is not None:
                raise AdminError(f"a NAS named {name!r} already exists")
            other = s.scalar(select(NasClient.name).where(NasClient.address == network))
            if other is not None:
                raise AdminError(f"NAS {other!r} already has the address {network}")
            row = NasClient(
                name=name,
                address=network,
                secret=secret,
                profile=profile,
                require_message_authenticator=require_message_authenticator,
                message_authenticator_seen=False,
                boot_epoch=0,
                created_at=now,
            )
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:
                if _duplicate(exc):
                    raise AdminError(f"a NAS named {name!r} already exists") from None
                raise
            return _nas_info(row)

    def nas_list(self) -> list[NasInfo]:
        with self.db.transaction() as s:
            return [_nas_info(r) for r in s.scalars(select(NasClient).order_by(NasClient.name))]

    def nas_remove(self, name: str) -> None:
        with self.db.transaction() as s:
            result = s.execute(delete(NasClient).where(NasClient.name == name.strip()))
            if _rowcount(result) == 0:
                raise AdminError(f"no NAS named {name!r}")

    # ----------------------------------------------------------------- rate groups and rates
    def rategroup_add(self, name: str, now: datetime, currency: str = "USD") -> RateGroupInfo:
        name = name.strip()
        if not _NAME.match(name):
            raise AdminError(
                f"bad rate group name {name!r}: use up to 64 letters, digits, '.', '_' or '-'"
            )
        currency = currency.strip().upper()
        if not _CURRENCY.match(currency):
            raise AdminError(f"currency must be a 3-letter ISO 4217 code, got {currency!r}")
        with self.db.transaction() as s:
            if s.scalar(select(RateGroup.id).where(RateGroup.name == name)) is not None:
                raise AdminError(f"a rate group named {name!r} already exists")
            row = RateGroup(name=name, currency=currency, created_at=now)
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:
                if _duplicate(exc):
                    raise AdminError(f"a rate group named {name!r} already exists") from None
                raise
            return RateGroupInfo(row.id, row.name, row.currency, 0, row.created_at)

    def rategroup_list(self) -> list[RateGroupInfo]:
        with self.db.transaction() as s:
            rows = s.execute(
                select(RateGroup, func.count(RateRow.id))
                .outerjoin(RateRow, RateRow.rate_group_id == RateGroup.id)
                .group_by(RateGroup.id)
                .order_by(RateGroup.name)
            ).all()
            return [RateGroupInfo(g.id, g.name, g.currency, int(n), g.created_at) for g, n in rows]

    @staticmethod
    def _group(s: Session, name: str) -> RateGroup:
        group = s.scalars(select(RateGroup).where(RateGroup.name == name.strip())).first()
        if group is None:
            raise AdminError(f"no rate group named {name!r}")
        return group

    def import_rates(
        self, group_name: str, rates: Sequence[Rate], replace: bool = False
    ) -> ImportResult:
        """Upsert ``rates`` by prefix into the group; ``replace`` deletes prefixes not listed."""
        if not rates:
            raise AdminError("no rates to import")
        prefixes = [r.prefix for r in rates]
        if len(set(prefixes)) != len(prefixes):
            raise AdminError("the same prefix appears twice in the rates to import")
        table = cast(Table, RateRow.__table__)
        with self.db.transaction() as s:
            group = self._group(s, group_name)
            existing: dict[str, int] = {
                prefix: rid
                for prefix, rid in s.execute(
                    select(RateRow.prefix, RateRow.id).where(RateRow.rate_group_id == group.id)
                )
            }

            def values(rate: Rate) -> dict[str, object]:
                return {
                    "description": rate.description,
                    "price_per_minute": round_money(rate.price_per_minute, self.places),
                    "connection_fee": round_money(rate.connection_fee, self.places),
                    "first_increment": rate.first_increment,
                    "next_increment": rate.next_increment,
                    "grace_seconds": rate.grace_seconds,
                }

            new = [
                {"rate_group_id": group.id, "prefix": r.prefix, **values(r)}
                for r in rates
                if r.prefix not in existing
            ]
            changed = [
                {"_id": existing[r.prefix], **values(r)} for r in rates if r.prefix in existing
            ]
            for start in range(0, len(new), CHUNK_SIZE):
                s.execute(insert(table), new[start : start + CHUNK_SIZE])
            if changed:
                stmt = (
                    update(table)
                    .where(table.c.id == bindparam("_id"))
                    .values(
                        {
                            name: bindparam(name)
                            for name in (
                                "description",
                                "price_per_minute",
                                "connection_fee",
                                "first_increment",
                                "next_increment",
                                "grace_seconds",
                            )
                        }
                    )
                )
                for start in range(0, len(changed), CHUNK_SIZE):
                    s.connection().execute(stmt, changed[start : start + CHUNK_SIZE])
            deleted = 0
            if replace:
                keep = set(prefixes)
                stale = [rid for prefix, rid in existing.items() if prefix not in keep]
                for start in range(0, len(stale), _IN_CHUNK):
                    part = stale[start : start + _IN_CHUNK]
                    s.execute(delete(RateRow).where(RateRow.id.in_(part)))
                deleted = len(stale)
            return ImportResult(group.name, len(new), len(changed), deleted)

    def lookup_rate(self, group_name: str, number: str) -> RateLookup:
        normalized = normalize_number(number, self.number_rules)
        if not normalized:
            raise AdminError(f"not a usable telephone number: {number!r}")
        with self.db.transaction() as s:
            group = self._group(s, group_name)
            row = find_rate(s, group.id, normalized)
            return RateLookup(group.name, normalized, _rate_info(group, row) if row else None)

    # ----------------------------------------------------------------- batches
    def create_batch(
        self,
        *,
        rate_group: str,
        card_type: str,
        value: Decimal | str,
        count: int,
        pin_key: bytes,
        now: datetime,
        validity_days: int | None = None,
        grace_days: int = 0,
        expires_on: date | None = None,
        max_calls: int = 1,
        pin_length: int = 12,
        pin_prefix: str = "",
        activation: str = "manual",
        max_density: float = 1e-4,
        note: str = "",
        export: ExportSink | None = None,
        progress: Callable[[int], None] | None = None,
        chunk_size: int | None = None,
    ) -> BatchInfo:
        """Issue ``count`` cards in one transaction; PINs go only to ``export``.

        ``progress`` is called with the number of cards written after each chunk (by default
        :data:`COPY_CHUNK_SIZE` cards on PostgreSQL, :data:`CHUNK_SIZE` on SQLite).
        """
        with self.db.transaction() as s:
            return self._create_batch(
                s,
                rate_group=rate_group,
                card_type=card_type,
                value=value,
                count=count,
                pin_key=pin_key,
                now=now,
                validity_days=validity_days,
                grace_days=grace_days,
                expires_on=expires_on,
                max_calls=max_calls,
                pin_length=pin_length,
                pin_prefix=pin_prefix,
                activation=activation,
                max_density=max_density,
                note=note,
                export=export,
                progress=progress,
                chunk_size=chunk_size,
            )

    def _create_batch(
        self,
        s: Session,
        *,
        rate_group: str,
        card_type: str,
        value: Decimal | str,
        count: int,
        pin_key: bytes,
        now: datetime,
        validity_days: int | None,
        grace_days: int,
        expires_on: date | None,
        max_calls: int,
        pin_length: int,
        pin_prefix: str,
        activation: str,
        max_density: float,
        note: str,
        export: ExportSink | None,
        progress: Callable[[int], None] | None,
        chunk_size: int | None,
    ) -> BatchInfo:
        try:
            kind = CardType(card_type)
        except ValueError:
            raise AdminError(
                f"unknown card type {card_type!r}: use one of "
                f"{', '.join(t.value for t in CardType)}"
            ) from None
        try:
            mode = ActivationMode(activation)
        except ValueError:
            raise AdminError(
                f"unknown activation {activation!r}: use one of "
                f"{', '.join(m.value for m in ActivationMode)}"
            ) from None
        try:
            face = parse_amount(value, self.places)
        except MoneyError as exc:
            raise AdminError(f"value: {exc}") from None
        if face < 0 or (face == 0 and kind != CardType.UNLIMITED):
            raise AdminError("the card value must be greater than 0")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AdminError("the card count must be at least 1")
        if validity_days is not None and validity_days < 1:
            raise AdminError("validity days must be at least 1")
        if grace_days < 0:
            raise AdminError("grace days must not be negative")
        if max_calls < 1:
            raise AdminError("max calls must be at least 1")
        if expires_on is not None and expires_on < now.date():
            raise AdminError(f"the expiry date {expires_on.isoformat()} is in the past")
        if kind == CardType.UNLIMITED and validity_days is None and expires_on is None:
            raise AdminError("unlimited cards need --validity-days or --expires-on")
        if len(note) > 128:
            raise AdminError("the note is longer than 128 characters")
        try:
            fmt = PinFormat(pin_length, pin_prefix or "")
        except ValueError as exc:
            raise AdminError(str(exc)) from None

        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres:
            s.execute(select(func.pg_advisory_xact_lock(_BATCH_LOCK_KEY)))
        group = self._group(s, rate_group)
        existing = s.scalar(
            select(func.coalesce(func.sum(Batch.card_count), 0))
            .where(Batch.pin_length == fmt.length)
            .where(Batch.pin_prefix == fmt.prefix)
        )
        try:
            check_density(fmt, int(existing or 0), count, max_density)
        except PinSpaceError as exc:
            raise AdminError(str(exc)) from None

        highest = s.scalar(select(func.max(Card.serial)))
        first = max(int(highest or 0) + 1, FIRST_SERIAL)
        last = first + count - 1
        batch = Batch(
            card_type=kind.value,
            face_value=face,
            currency=group.currency,
            rate_group_id=group.id,
            validity_days=validity_days,
            grace_days=grace_days,
            expires_on=expires_on,
            max_calls=max_calls,
            pin_length=fmt.length,
            pin_prefix=fmt.prefix,
            activation_mode=mode.value,
            card_count=count,
            first_serial=first,
            last_serial=last,
            note=note,
            created_at=now,
        )
        s.add(batch)
        s.flush()
        info = _batch_info(batch, group.name)

        hasher = make_pin_hasher(pin_key)
        expires_at = end_of_day(expires_on) if expires_on else None
        common = {
            "batch_id": batch.id,
            "card_type": kind.value,
            "state": CardState.INACTIVE.value,
            "locked": False,
            "lock_reason": None,
            "balance": face,
            "currency": group.currency,
            "rate_group_id": group.id,
            "max_calls": max_calls,
            "activation_mode": mode.value,
            "validity_days": validity_days,
            "grace_days": grace_days,
            "expires_at": expires_at,
            "activated_at": None,
            "first_used_at": None,
            "failed_pin_count": 0,
            "created_at": now,
        }
        if postgres:
            writer: _CardWriter = _CopyCardWriter(s, common, now)
            size = chunk_size or COPY_CHUNK_SIZE
        else:
            writer = _InsertCardWriter(s, common, now)
            size = chunk_size or CHUNK_SIZE
        if size < 1:
            raise ValueError("chunk_size must be at least 1")

        def to_export(first_serial: int, pins: Sequence[tuple[str, str]]) -> None:
            if export is not None:
                export.write_cards(
                    info, [(str(first_serial + i), pin) for i, (_h, pin) in enumerate(pins)]
                )

        sizes = _chunk_sizes(count, size)
        if postgres:
            engine = self.db.engine

            def connect() -> Any:
                return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

            draws = _Draws(fmt, pin_key, sizes, _taken_on, connect)
        else:
            draws = _Draws(fmt, pin_key, sizes)
        try:
            written = 0
            for n in sizes:
                pins = draws.next()
                if isinstance(writer, _InsertCardWriter):  # drawn unchecked: check here
                    pins = _fresh_pins(writer.taken, fmt, n, hasher, pins)
                # Serials follow the hashes' order: the unique index on pin_hash is then
                # filled leaf by leaf instead of at random (the PINs are random anyway).
                pins.sort()
                writer.write(first + written, pins, to_export)
                del pins
                written += n
                if progress is not None:
                    progress(written)
        finally:
            draws.close()
        if export is not None:
            export.finish()
        return info

    # ----------------------------------------------------------------- cards
    @staticmethod
    def _card(s: Session, serial: str | int, for_update: bool = False) -> Card:
        number = parse_serial(serial)
        stmt = select(Card).where(Card.serial == number)
        if for_update:
            stmt = stmt.with_for_update()
        card = s.scalars(stmt).first()
        if card is None:
            raise AdminError(f"no card with serial {number}")
        return card

    def _card_info(self, s: Session, card: Card) -> CardInfo:
        group_name = s.scalar(select(RateGroup.name).where(RateGroup.id == card.rate_group_id))
        anis = tuple(
            s.scalars(
                select(BindNumber.ani).where(BindNumber.card_id == card.id).order_by(BindNumber.ani)
            )
        )
        live = s.scalar(
            select(func.count(LiveSession.id))
            .where(LiveSession.card_id == card.id)
            .where(LiveSession.state.in_(OPEN_SESSION_STATES))
        )
        return CardInfo(
            serial=str(card.serial),
            state="locked" if card.locked else card.state,
            stored_state=card.state,
            locked=card.locked,
            lock_reason=card.lock_reason,
            type=card.card_type,
            balance=round_money(card.balance, self.places),
            currency=card.currency,
            max_calls=card.max_calls,
            activation=card.activation_mode,
            validity_days=card.validity_days,
            grace_days=card.grace_days,
            expires_at=card.expires_at,
            activated_at=card.activated_at,
            first_used_at=card.first_used_at,
            created_at=card.created_at,
            batch_id=card.batch_id,
            rate_group=group_name or "",
            failed_pin_count=card.failed_pin_count,
            bound_anis=anis,
            live_calls=int(live or 0),
        )

    def card_show(self, serial: str | int) -> CardInfo:
        with self.db.transaction() as s:
            return self._card_info(s, self._card(s, serial))

    @staticmethod
    def _selection(
        s: Session,
        serials: Sequence[str | int],
        batch_id: int | None,
        serial_range: tuple[str | int, str | int] | None,
    ) -> tuple[int, list[ColumnElement[bool]]]:
        """Cards chosen by serials, by batch or by an inclusive serial range (exactly one way).

        Returns how many cards that is and conditions that select them (several for a long list
        of serials, each below the database's limit of bind parameters).
        """
        ways = (bool(serials), batch_id is not None, serial_range is not None)
        if sum(1 for way in ways if way) != 1:
            raise AdminError("choose the cards by serials, by batch or by range (exactly one)")
        if serials:
            numbers = sorted({parse_serial(x) for x in serials})
            found: set[int] = set()
            conditions: list[ColumnElement[bool]] = []
            for start in range(0, len(numbers), _IN_CHUNK):
                part = numbers[start : start + _IN_CHUNK]
                found.update(s.scalars(select(Card.serial).where(Card.serial.in_(part))))
                conditions.append(Card.serial.in_(part))
            missing = [n for n in numbers if n not in found]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise AdminError(f"no card with serial {missing[0]}{more}")
            return len(numbers), conditions
        if batch_id is not None:
            if s.get(Batch, batch_id) is None:
                raise AdminError(f"no batch with id {batch_id}")
            condition = Card.batch_id == batch_id
        else:
            assert serial_range is not None
            lo, hi = parse_serial(serial_range[0]), parse_serial(serial_range[1])
            if lo > hi:
                raise AdminError(f"bad serial range {lo}-{hi}: the first is after the last")
            condition = Card.serial.between(lo, hi)
        matched = int(s.scalar(select(func.count(Card.id)).where(condition)) or 0)
        if matched == 0:
            raise AdminError("no cards in that serial range")
        return matched, [condition]

    def activate(
        self,
        now: datetime,
        *,
        serials: Sequence[str | int] = (),
        batch_id: int | None = None,
        serial_range: tuple[str | int, str | int] | None = None,
    ) -> ActivationResult:
        """Activate inactive cards chosen by serials, by batch or by an inclusive serial range."""
        with self.db.transaction() as s:
            matched, conditions = self._selection(s, serials, batch_id, serial_range)
            activated = sum(self._activate_where(s, now, c) for c in conditions)
            return ActivationResult(matched, activated)

    @staticmethod
    def _activate_where(s: Session, now: datetime, condition: ColumnElement[bool]) -> int:
        result = s.execute(
            update(Card)
            .where(condition)
            .where(Card.state == CardState.INACTIVE.value)
            .values(state=CardState.ACTIVE.value, activated_at=now)
            .execution_options(synchronize_session=False)
        )
        return _rowcount(result)

    @staticmethod
    def _lock_reason(reason: str) -> str:
        reason = reason.strip() or "locked by operator"
        if len(reason) > 64:
            raise AdminError("the lock reason is longer than 64 characters")
        if reason == TRANSFERRED:
            raise AdminError(f"the lock reason {TRANSFERRED!r} is reserved for card transfer")
        return reason

    def lock(self, serial: str | int, reason: str = "") -> CardInfo:
        reason = self._lock_reason(reason)
        with self.db.transaction() as s:
            card = self._card(s, serial, for_update=True)
            if card.lock_reason == TRANSFERRED:
                raise AdminError(f"card {card.serial} is locked: its balance was transferred")
            card.locked = True
            card.lock_reason = reason
            s.flush()
            return self._card_info(s, card)

    def lock_cards(
        self,
        reason: str = "",
        *,
        serials: Sequence[str | int] = (),
        batch_id: int | None = None,
        serial_range: tuple[str | int, str | int] | None = None,
    ) -> BulkResult:
        """Lock every chosen card that is not locked yet (locked ones keep their reason)."""
        reason = self._lock_reason(reason)
        with self.db.transaction() as s:
            matched, conditions = self._selection(s, serials, batch_id, serial_range)
            changed = 0
            for condition in conditions:
                changed += _rowcount(
                    s.execute(
                        update(Card)
                        .where(condition)
                        .where(Card.locked.is_(False))
                        .values(locked=True, lock_reason=reason)
                        .execution_options(synchronize_session=False)
                    )
                )
            return BulkResult(matched, changed)

    def unlock(self, serial: str | int) -> CardInfo:
        with self.db.transaction() as s:
            card = self._card(s, serial, for_update=True)
            if card.lock_reason == TRANSFERRED:
                raise AdminError(
                    f"card {card.serial} stays locked: its balance was transferred to another card"
                )
            card.locked = False
            card.lock_reason = None
            card.failed_pin_count = 0
            s.flush()
            return self._card_info(s, card)

    def unlock_cards(
        self,
        *,
        serials: Sequence[str | int] = (),
        batch_id: int | None = None,
        serial_range: tuple[str | int, str | int] | None = None,
    ) -> BulkResult:
        """Unlock the chosen locked cards (and reset their wrong-PIN counters).

        Cards whose balance was transferred away stay locked.
        """
        with self.db.transaction() as s:
            matched, conditions = self._selection(s, serials, batch_id, serial_range)
            changed = 0
            for condition in conditions:
                changed += _rowcount(
                    s.execute(
                        update(Card)
                        .where(condition)
                        .where(Card.locked.is_(True))
                        .where(Card.lock_reason.is_(None) | (Card.lock_reason != TRANSFERRED))
                        .values(locked=False, lock_reason=None, failed_pin_count=0)
                        .execution_options(synchronize_session=False)
                    )
                )
            return BulkResult(matched, changed)

    def recharge(
        self,
        serial: str | int,
        amount: Decimal | str,
        now: datetime,
        note: str = "",
        extend_days: int | None = None,
    ) -> RechargeResult:
        """Top up a rechargeable card, and optionally extend its validity by ``extend_days``.

        - Only ``rechargeable`` cards; never a ``retired`` one. An ``exhausted`` card becomes
          ``active`` again.
        - ``extend_days`` on a card that has not expired adds the days to ``expires_at``; a card
          whose validity has not started yet (never used, no absolute expiry) gets that many more
          validity days instead; a card that never expires refuses it.
        - A card past its expiry (state ``expired``, or ``expires_at`` passed and the expiry run
          not there yet) can be recharged during its grace period, ``now < expires_at +
          grace_days``: the recharge reactivates it (state ``active``) and gives it a future
          expiry: ``now + extend_days`` when given, else ``now + validity_days`` — a fresh
          validity period from the recharge, as if the card were used for the first time today.
          A card without validity days needs ``extend_days`` then. Reactivating a card whose
          expiry has passed without a new expiry would leave it unusable, so that is never done.
        - After the grace period the recharge is refused: the balance is forfeited (or will be by
          the next expiry run) and the card is closed.
        """
        try:
            value = parse_amount(amount, self.places)
        except MoneyError as exc:
            raise AdminError(f"amount: {exc}") from None
        if value <= 0:
            raise AdminError("the recharge amount must be greater than 0")
        if extend_days is not None and extend_days < 1:
            raise AdminError("--extend-days must be at least 1")
        with self.db.transaction() as s:
            card = self._card(s, serial, for_update=True)
            if card.card_type != CardType.RECHARGEABLE.value:
                raise AdminError(
                    f"card {card.serial} is a {card.card_type} card; only rechargeable cards "
                    "can be recharged"
                )
            if card.state == CardState.RETIRED.value:
                raise AdminError(f"card {card.serial} is retired and cannot be recharged")
            past_expiry = card.state == CardState.EXPIRED.value or (
                card.expires_at is not None and card.expires_at <= now
            )
            reactivated = False
            if past_expiry:
                if card.expires_at is None or now >= card.expires_at + timedelta(
                    days=card.grace_days
                ):
                    raise AdminError(
                        f"card {card.serial} expired and its grace period is over; "
                        "its balance is forfeited"
                    )
                days = extend_days if extend_days is not None else card.validity_days
                if not days:
                    raise AdminError(
                        f"card {card.serial} has expired and has no validity days: "
                        "give --extend-days N to recharge it"
                    )
                card.expires_at = now + timedelta(days=days)
                card.state = CardState.ACTIVE.value
                reactivated = True
            elif extend_days is not None:
                if card.expires_at is not None:
                    card.expires_at = card.expires_at + timedelta(days=extend_days)
                elif card.first_used_at is None and card.validity_days:
                    card.validity_days = card.validity_days + extend_days
                else:
                    raise AdminError(
                        f"card {card.serial} never expires; --extend-days does not apply"
                    )
            balance = round_money(card.balance + value, self.places)
            card.balance = balance
            if card.state == CardState.EXHAUSTED.value:
                card.state = CardState.ACTIVE.value
            s.add(
                LedgerEntry(
                    card_id=card.id,
                    kind=LedgerKind.RECHARGE,
                    amount=value,
                    balance_after=balance,
                    note=note,
                    created_at=now,
                )
            )
            s.flush()
            return RechargeResult(
                str(card.serial),
                value,
                balance,
                card.currency,
                card.state,
                card.expires_at,
                reactivated,
            )

    def transfer(
        self, from_serial: str | int, to_serial: str | int, now: datetime
    ) -> TransferResult:
        """Move the whole remaining balance of a (lost) card to another card.

        The old card ends ``retired``, locked with reason ``transferred``, balance 0; two ledger
        entries of kind ``transfer`` (-x on the old card, +x on the new one) record the move.
        Refused while the old card has live calls (they could still be billed to it), across
        currencies, from or to an unlimited card (its balance buys no minutes), from a card with
        nothing to move or whose grace period is over (its balance is forfeited), and to a card
        that is not usable: locked, expired (by state or by date), retired. An ``exhausted``
        target becomes ``active``. Both cards are locked in id order, so two transfers never
        deadlock.

        The old card's bound numbers (ANIs) move to the new card with the balance: the
        customer's phones keep calling without a PIN, now on the new card. Refused when that
        would give the new card more than ``max_bind_numbers``; unbind some first.
        """
        a, b = parse_serial(from_serial), parse_serial(to_serial)
        if a == b:
            raise AdminError("cannot transfer a card's balance to itself")
        with self.db.transaction() as s:
            cards = {
                c.serial: c
                for c in s.scalars(
                    select(Card).where(Card.serial.in_((a, b))).order_by(Card.id).with_for_update()
                )
            }
            for number in (a, b):
                if number not in cards:
                    raise AdminError(f"no card with serial {number}")
            old, new = cards[a], cards[b]
            live = int(
                s.scalar(
                    select(func.count(LiveSession.id))
                    .where(LiveSession.card_id == old.id)
                    .where(LiveSession.state.in_(OPEN_SESSION_STATES))
                )
                or 0
            )
            if live:
                raise AdminError(
                    f"card {a} has {live} live call(s); transfer it when they have ended"
                )
            if old.currency != new.currency:
                raise AdminError(
                    f"card {a} is in {old.currency} and card {b} in {new.currency}; "
                    "a transfer cannot change currency"
                )
            for card in (old, new):
                if card.card_type == CardType.UNLIMITED.value:
                    raise AdminError(
                        f"card {card.serial} is an unlimited card; its balance cannot be moved"
                    )
            if old.state == CardState.RETIRED.value:
                raise AdminError(f"card {a} is retired; there is nothing to transfer")
            if old.expires_at is not None and now >= old.expires_at + timedelta(
                days=old.grace_days
            ):
                raise AdminError(
                    f"card {a} expired and its grace period is over; its balance is forfeited"
                )
            amount = round_money(old.balance, self.places)
            if amount <= 0:
                raise AdminError(f"card {a} has no balance to transfer")
            if new.locked:
                raise AdminError(f"card {b} is locked and cannot receive a transfer")
            if new.state in (CardState.EXPIRED.value, CardState.RETIRED.value) or (
                new.expires_at is not None and new.expires_at <= now
            ):
                state = new.state if new.state != CardState.ACTIVE.value else "expired"
                raise AdminError(f"card {b} is {state} and cannot receive a transfer")

            binds = list(
                s.scalars(
                    select(BindNumber).where(BindNumber.card_id == old.id).order_by(BindNumber.ani)
                )
            )
            if binds:
                have = _bound_count(s, new.id)
                if have + len(binds) > self.max_bind_numbers:
                    raise AdminError(
                        f"card {a} has {len(binds)} bound number(s) and card {b} {have}: "
                        f"together more than the {self.max_bind_numbers} a card may have; "
                        "unbind some first (prepaidctl bind remove)"
                    )
                for bind in binds:
                    bind.card_id = new.id

            old.balance = round_money(ZERO, self.places)
            old.locked = True
            old.lock_reason = TRANSFERRED
            old.state = CardState.RETIRED.value
            new.balance = round_money(new.balance + amount, self.places)
            if new.state == CardState.EXHAUSTED.value:
                new.state = CardState.ACTIVE.value
            s.add_all(
                [
                    LedgerEntry(
                        card_id=old.id,
                        kind=LedgerKind.TRANSFER,
                        amount=-amount,
                        balance_after=old.balance,
                        note=f"to card {b}",
                        created_at=now,
                    ),
                    LedgerEntry(
                        card_id=new.id,
                        kind=LedgerKind.TRANSFER,
                        amount=amount,
                        balance_after=new.balance,
                        note=f"from card {a}",
                        created_at=now,
                    ),
                ]
            )
            s.flush()
            return TransferResult(
                str(a),
                str(b),
                amount,
                new.currency,
                new.balance,
                new.state,
                tuple(bind.ani for bind in binds),
            )

    def history(self, serial: str | int) -> CardHistory:
        """A card's ledger, oldest first; call entries say which call they paid for."""
        with self.db.transaction() as s:
            card = self._card(s, serial)
            rows = s.execute(
                select(
                    LedgerEntry.created_at,
                    LedgerEntry.kind,
                    LedgerEntry.amount,
                    LedgerEntry.balance_after,
                    LedgerEntry.note,
                    Cdr.called_number,
                    Cdr.duration_seconds,
                )
                .outerjoin(Cdr, Cdr.id == LedgerEntry.cdr_id)
                .where(LedgerEntry.card_id == card.id)
                .order_by(LedgerEntry.id)
            ).all()
            entries = []
            for r in rows:
                note = r.note or ""
                if r.called_number is not None and not note:
                    note = f"call to {r.called_number}, {r.duration_seconds} s"
                entries.append(
                    LedgerRow(
                        created_at=r.created_at,
                        kind=r.kind,
                        amount=round_money(r.amount, self.places),
                        balance_after=round_money(r.balance_after, self.places),
                        note=note,
                    )
                )
            return CardHistory(
                str(card.serial),
                card.currency,
                round_money(card.balance, self.places),
                tuple(entries),
            )

    # ----------------------------------------------------------------- batch figures
    def batch_list(self) -> list[BatchSummary]:
        with self.db.transaction() as s:
            remaining = (
                select(Card.batch_id, func.sum(Card.balance).label("remaining"))
                .group_by(Card.batch_id)
                .subquery()
            )
            rows = s.execute(
                select(Batch, RateGroup.name, remaining.c.remaining)
                .join(RateGroup, RateGroup.id == Batch.rate_group_id)
                .outerjoin(remaining, remaining.c.batch_id == Batch.id)
                .order_by(Batch.id)
            ).all()
            return [
                BatchSummary(
                    id=b.id,
                    card_type=b.card_type,
                    value=round_money(b.face_value, self.places),
                    currency=b.currency,
                    rate_group=name,
                    count=b.card_count,
                    first_serial=str(b.first_serial),
                    last_serial=str(b.last_serial),
                    value_remaining=self._sum(rest),
                    created_at=b.created_at,
                    note=b.note,
                )
                for b, name, rest in rows
            ]

    def _sum(self, value: object) -> Decimal:
        """A SUM() from the database as money (SQLite may hand back a float or None)."""
        if value is None:
            return round_money(ZERO, self.places)
        return round_money(Decimal(str(value)), self.places)

    def batch_show(self, batch_id: int) -> BatchDetail:
        with self.db.transaction() as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise AdminError(f"no batch with id {batch_id}")
            group_name = s.scalar(select(RateGroup.name).where(RateGroup.id == batch.rate_group_id))
            effective = case((Card.locked.is_(True), literal("locked", String())), else_=Card.state)
            counts: dict[str, int] = {
                state: int(n)
                for state, n in s.execute(
                    select(effective, func.count(Card.id))
                    .where(Card.batch_id == batch.id)
                    .group_by(effective)
                )
            }
            remaining = s.scalar(select(func.sum(Card.balance)).where(Card.batch_id == batch.id))
            sums = {
                kind: total
                for kind, total in s.execute(
                    select(LedgerEntry.kind, func.sum(LedgerEntry.amount))
                    .join(Card, Card.id == LedgerEntry.card_id)
                    .where(Card.batch_id == batch.id)
                    .group_by(LedgerEntry.kind)
                )
            }
            states = tuple((state, int(counts.pop(state, 0))) for state in CARD_STATES_SHOWN)
            states += tuple(sorted((k, int(v)) for k, v in counts.items()))
            return BatchDetail(
                batch=_batch_info(batch, group_name or ""),
                states=states,
                value_issued=self._sum(sums.get(LedgerKind.CREATION)),
                recharges=self._sum(sums.get(LedgerKind.RECHARGE)),
                call_revenue=-self._sum(sums.get(LedgerKind.CALL)),
                breakage=-self._sum(sums.get(LedgerKind.EXPIRY)),
                transfers=self._sum(sums.get(LedgerKind.TRANSFER)),
                adjustments=self._sum(sums.get(LedgerKind.ADJUSTMENT)),
                value_remaining=self._sum(remaining),
            )

    # ----------------------------------------------------------------- bind numbers
    def _ani(self, raw: str) -> str:
        ani = normalize_number(raw, self.number_rules)
        if not ani:
            raise AdminError(f"not a usable telephone number: {raw!r}")
        if len(ani) > 32:
            raise AdminError(f"the number {ani} is longer than 32 digits")
        return ani

    def bind_add(self, serial: str | int, ani: str, now: datetime) -> BindInfo:
        number = self._ani(ani)
        with self.db.transaction() as s:
            card = self._card(s, serial, for_update=True)
            owner = s.scalar(
                select(Card.serial)
                .join(BindNumber, BindNumber.card_id == Card.id)
                .where(BindNumber.ani == number)
            )
            if owner is not None:
                raise AdminError(f"{number} is already bound to card {owner}")
            bound = _bound_count(s, card.id)
            if bound >= self.max_bind_numbers:
                raise AdminError(
                    f"card {card.serial} already has {bound} bound numbers "
                    f"(the maximum is {self.max_bind_numbers})"
                )
            row = BindNumber(card_id=card.id, ani=number, created_at=now)
            s.add(row)
            try:
                s.flush()
            except IntegrityError as exc:
                if _duplicate(exc):
                    raise AdminError(f"{number} is already bound to a card") from None
                raise
            return BindInfo(str(card.serial), number, now)

    def bind_remove(self, ani: str) -> BindInfo:
        number = self._ani(ani)
        with self.db.transaction() as s:
            row = s.execute(
                select(BindNumber, Card.serial)
                .join(Card, Card.id == BindNumber.card_id)
                .where(BindNumber.ani == number)
            ).first()
            if row is None:
                raise AdminError(f"{number} is not bound to any card")
            bind, serial = row
            info = BindInfo(str(serial), bind.ani, bind.created_at)
            s.delete(bind)
            return info

    def bind_list(self, serial: str | int) -> list[BindInfo]:
        with self.db.transaction() as s:
            card = self._card(s, serial)
            rows = s.scalars(
                select(BindNumber).where(BindNumber.card_id == card.id).order_by(BindNumber.ani)
            )
            return [BindInfo(str(card.serial), r.ani, r.created_at) for r in rows]

    # ----------------------------------------------------------------- live sessions
    def sessions_list(
        self, now: datetime, serial: str | int | None = None
    ) -> list[LiveSessionInfo]:
        with self.db.transaction() as s:
            stmt = (
                select(LiveSession, Card.serial, NasClient.name)
                .join(Card, Card.id == LiveSession.card_id)
                .outerjoin(NasClient, NasClient.id == LiveSession.nas_id)
                .where(LiveSession.state.in_(OPEN_SESSION_STATES))
                .order_by(LiveSession.authorized_at, LiveSession.id)
            )
            if serial is not None:
                card = self._card(s, serial)
                stmt = stmt.where(LiveSession.card_id == card.id)
            result = []
            for live, card_serial, nas_name in s.execute(stmt):
                elapsed = None
                if live.started_at is not None:
                    elapsed = max(0, int((now - live.started_at).total_seconds()))
                result.append(
                    LiveSessionInfo(
                        id=live.id,
                        serial=str(card_serial),
                        nas=nas_name,
                        calling_number=live.calling_number,
                        called_number=live.called_number,
                        granted_seconds=live.granted_seconds,
                        reserved_amount=round_money(live.reserved_amount, self.places),
                        state=live.state,
                        authorized_at=live.authorized_at,
                        started_at=live.started_at,
                        elapsed_seconds=elapsed,
                    )
                )
            return result

    # ----------------------------------------------------------------- reports
    def card_bill(
        self, serial: str | int, from_date: date | None = None, to_date: date | None = None
    ) -> CardBill:
        """The Phone Card Bill: a card's calls in [from_date, to_date] (whole days, UTC)."""
        if from_date and to_date and from_date > to_date:
            raise AdminError(f"--from {from_date} is after --to {to_date}")
        with self.db.transaction() as s:
            card = self._card(s, serial)
            conditions = [Cdr.card_id == card.id]
            if from_date is not None:
                conditions.append(Cdr.started_at >= datetime.combine(from_date, time.min))
            if to_date is not None:
                conditions.append(
                    Cdr.started_at < datetime.combine(to_date + timedelta(days=1), time.min)
                )
            rows = s.execute(
                select(
                    Cdr.started_at,
                    Cdr.calling_number,
                    Cdr.called_number,
                    Cdr.duration_seconds,
                    Cdr.billed_seconds,
                    Cdr.cost,
                    Cdr.balance_after,
                    Cdr.leg,
                )
                .where(*conditions)
                .order_by(Cdr.started_at, Cdr.id)
            ).all()
            calls, duration, billed, total = s.execute(
                select(
                    func.count(Cdr.id),
                    func.coalesce(func.sum(Cdr.duration_seconds), 0),
                    func.coalesce(func.sum(Cdr.billed_seconds), 0),
                    func.coalesce(func.sum(Cdr.cost), ZERO),
                ).where(*conditions)
            ).one()
            return CardBill(
                serial=str(card.serial),
                currency=card.currency,
                from_date=from_date,
                to_date=to_date,
                rows=tuple(
                    CardBillRow(
                        started_at=r.started_at,
                        calling_number=r.calling_number,
                        called_number=r.called_number,
                        duration_seconds=r.duration_seconds,
                        billed_seconds=r.billed_seconds,
                        cost=round_money(r.cost, self.places),
                        balance_after=round_money(r.balance_after, self.places),
                        leg=r.leg,
                    )
                    for r in rows
                ),
                calls=int(calls),
                total_duration_seconds=int(duration),
                total_billed_seconds=int(billed),
                total_cost=round_money(Decimal(str(total)), self.places),
            )

    # ----------------------------------------------------------------- demo
    def is_empty(self) -> bool:
        with self.db.transaction() as s:
            return not s.scalar(
                select(
                    exists(select(NasClient.id))
                    | exists(select(RateGroup.id))
                    | exists(select(Card.id))
                )
            )

    def demo_seed(self, pin_key: bytes, now: datetime, export_path: Path) -> DemoSeed:
        """Seed a ready-to-call demo, only into a database with no NAS, rate group or card.

        NAS ``demo`` (127.0.0.1/32, secret ``s3cret``, Cisco profile so the h323 VSAs show),
        rate group ``demo`` (USD: 44, 1 and 49) and 5 activated standard cards worth 5.00,
        whose PINs are written to ``export_path`` (mode 0600, replaced if it exists: PINs of
        a database that is gone are worthless).
        """
        tmp = export_path.with_name(export_path.name + ".partial")
        try:
            return self._demo_seed(pin_key, now, export_path, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _demo_seed(self, pin_key: bytes, now: datetime, export_path: Path, tmp: Path) -> DemoSeed:
        with self.db.transaction() as s:
            busy = s.scalar(
                select(
                    exists(select(NasClient.id))
                    | exists(select(RateGroup.id))
                    | exists(select(Card.id))
                )
            )
            if busy:
                return DemoSeed(seeded=False)
            nas = NasClient(
                name="demo",
                address="127.0.0.1/32",
                secret="s3cret",  # noqa: S106 - the documented demo secret, loopback only
                profile="cisco",
                require_message_authenticator="auto",
                message_authenticator_seen=False,
                boot_epoch=0,
                created_at=now,
            )
            group = RateGroup(name="demo", currency="USD", created_at=now)
            s.add_all([nas, group])
            s.flush()
            for prefix, description, price, fee, first, nxt in (
                ("44", "United Kingdom", "0.07", "0.05", 30, 6),
                ("1", "North America", "0.02", "0", 60, 60),
                ("49", "Germany", "0.05", "0.05", 30, 6),
            ):
                s.add(
                    RateRow(
                        rate_group_id=group.id,
                        prefix=prefix,
                        description=description,
                        price_per_minute=parse_amount(price, self.places),
                        connection_fee=parse_amount(fee, self.places),
                        first_increment=first,
                        next_increment=nxt,
                        grace_seconds=0,
                    )
                )
            s.flush()
            with open_export_file(tmp, overwrite=True) as fh:
                sink = CsvCardExport(fh, self.places)
                batch = self._create_batch(
                    s,
                    rate_group="demo",
                    card_type="standard",
                    value="5.00",
                    count=5,
                    pin_key=pin_key,
                    now=now,
                    validity_days=None,
                    grace_days=0,
                    expires_on=None,
                    max_calls=1,
                    pin_length=12,
                    pin_prefix="",
                    activation="manual",
                    max_density=1e-4,
                    note="demo",
                    export=sink,
                    progress=None,
                    chunk_size=CHUNK_SIZE,
                )
            self._activate_where(s, now, Card.batch_id == batch.id)
            first, last = int(batch.first_serial), int(batch.last_serial)
            serials = tuple(str(n) for n in range(first, last + 1))
            nas_info = _nas_info(nas)
        # committed: only now does the export take its final name
        os.replace(tmp, export_path)
        return DemoSeed(True, export_path, batch, nas_info, "demo", serials)


class LedgerKind:
    CREATION = "creation"
    RECHARGE = "recharge"
    CALL = "call"
    TRANSFER = "transfer"
    EXPIRY = "expiry"
    ADJUSTMENT = "adjustment"


def _bound_count(s: Session, card_id: int) -> int:
    """How many numbers are bound to the card."""
    count = s.scalar(select(func.count(BindNumber.id)).where(BindNumber.card_id == card_id))
    return int(count or 0)
