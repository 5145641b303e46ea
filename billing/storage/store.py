"""The server's transactions: authorize a call, account for it, reap stale calls.

Each public method is one database transaction. Money decisions are made by the pure domain
(:func:`billing.domain.decide`, :mod:`billing.rating`) on snapshots read inside the transaction
that holds the card's row lock, so concurrent requests on one card — in this process or any
other — are serialized by the database and can never spend the same money twice.

Exactly once: a call's CDR has a unique ``call_key`` (the authorization token, or a key derived
from the NAS's session identifiers) and a finished call's live-session row stays ``closed`` for
``closed_session_retention_days``; a Stop that finds its call closed is acknowledged and ignored.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    String,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    null,
    select,
    true,
    union,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from billing.calls import (
    Accepted,
    AcctEvent,
    AcctResult,
    AcctStatus,
    AuthRequest,
    AuthResult,
    Nas,
    Rejected,
)
from billing.domain import (
    ActivationMode,
    CardSnapshot,
    CardState,
    CardType,
    Grant,
    Limits,
    RejectReason,
    decide,
)
from billing.money import ZERO, round_money
from billing.pins import looks_like_pin, make_pin_hasher
from billing.rating import Rate, billed_seconds, cost
from billing.settings import Settings
from billing.storage.database import Database, hot
from billing.storage.keys import load_or_create_pin_key
from billing.storage.models import (
    BindNumber,
    Card,
    Cdr,
    LedgerEntry,
    LiveSession,
    NasClient,
    RateGroup,
    SecurityEvent,
)
from billing.storage.rates import RateCache, rate_for

OPEN_STATES = ("authorized", "started")
RELEASE_CHUNK = 1000  # grants never started, released per transaction by the reaper
_CALL = frozenset({AcctStatus.START, AcctStatus.INTERIM, AcctStatus.STOP})  # events of one call

# The authorization's statements, built once: SQLAlchemy caches their compiled SQL, so a request
# pays only for executing them.
_cards = cast(Table, Card.__table__)
_CARD_COLUMNS = [
    _cards.c.id,
    _cards.c.serial,
    _cards.c.pin_hash,
    _cards.c.card_type,
    _cards.c.state,
    _cards.c.locked,
    _cards.c.balance,
    _cards.c.max_calls,
    _cards.c.activation_mode,
    _cards.c.validity_days,
    _cards.c.expires_at,
    _cards.c.first_used_at,
    _cards.c.currency,
    _cards.c.rate_group_id,
    _cards.c.failed_pin_count,
]
_live = cast(Table, LiveSession.__table__)
_binds = cast(Table, BindNumber.__table__)
_groups = cast(Table, RateGroup.__table__)
INSERT_GRANT = hot(insert(_live).values(state="authorized", session_key=None, session_seconds=0))
SECURITY_EVENT = hot(insert(cast(Table, SecurityEvent.__table__)))


#: How a batch names its cards: the parameter of each list, in the order the lookups are tried;
#: a call's token last (it names a card for the locks only).
CARD_LOOKUPS = ("pin_hashes", "serials", "anis", "tokens")


@dataclass(frozen=True, slots=True)
class _BatchStatements:
    """A batch's reads, each one statement whatever the number of requests (see
    :meth:`Store._authorize_many`). ``cards`` maps the lookups a batch makes (a subset of
    :data:`CARD_LOOKUPS`) to its statement."""

    cards: dict[frozenset[str], Any]
    locks: dict[frozenset[str], Any] | None  # PostgreSQL
    open_calls: Any  # SQLite
    calls: Any


def _batch_statements(postgresql_arrays: bool) -> _BatchStatements:
    """The batch's statements with their lists bound as one array each (PostgreSQL: one
    prepared statement whatever the lengths), or as expanding ``IN`` lists (SQLite)."""

    def among(column: Any, name: str, item_type: Any) -> Any:
        if postgresql_arrays:
            return column == any_(bindparam(name, type_=postgresql.ARRAY(item_type)))
        return column.in_(bindparam(name, expanding=True))

    def each(name: str, item_type: Any, per_item: Callable[[Any], Any]) -> Any:
        """``per_item(value)``, at most one row, for each value of the array ``name``: a lateral
        join (PostgreSQL), an index scan per value, as the planner makes it for one value.

        With ``= ANY(...)`` instead, a generic plan made while live_sessions is small (a fresh
        install) reads the whole table at every batch once it has grown, until it is analyzed
        again (in the benchmark: 3.3 ms a batch for the open calls, against 0.055). The
        ``LIMIT 1`` keeps it so: a simple lateral subquery is pulled up into a plain join, and
        the generic plan of the card locks, made while live_sessions held 875 rows, then hashed
        a sequential scan of the whole table in every batch (in the benchmark's full calls,
        1.3 ms a batch and a third of PostgreSQL's CPU once it held 6,000 rows)."""
        wanted = (
            func.unnest(bindparam(name, type_=postgresql.ARRAY(item_type)))
            .table_valued("value")
            .render_derived(name=f"wanted_{name}")
        )
        found = per_item(wanted.c.value).limit(1).lateral(f"each_{name}")
        return select(found).select_from(wanted.join(found, true()))

    #: The lookups by the card's own columns: alone in a batch, a condition on the cards.
    direct = {
        "pin_hashes": among(_cards.c.pin_hash, "pin_hashes", String),
        "serials": among(_cards.c.serial, "serials", BigInteger),
    }
    #: Each lookup as a subquery of card ids, for a batch that makes several. A call's token
    #: names a card only for the locks (PostgreSQL).
    arms = {
        **{name: select(_cards.c.id).where(condition) for name, condition in direct.items()},
        "anis": select(_binds.c.card_id).where(among(_binds.c.ani, "anis", String)),
    }
    if postgresql_arrays:
        arms["tokens"] = each(
            "tokens", String, lambda token: select(_live.c.card_id).where(_live.c.token == token)
        )

    def named(lookups: frozenset[str]) -> Any:
        """The condition on the cards named by ``lookups`` only: a batch of PIN authorizations
        asks for PIN hashes alone, one index scan. One statement with all four lookups (a
        union, whose generic plan hashes, sorts and merge-joins the empty ones too) cost
        PostgreSQL 123 µs of CPU per transaction for one PIN (with its ``BEGIN`` and
        ``ROLLBACK``), against 87 µs for the index scan alone; six PINs 123 against 77, a PIN
        and a call's token 137 against 97 (prepared, generic plans, 3,000 runs each on 40,000
        cards)."""
        order = [name for name in CARD_LOOKUPS if name in lookups]
        if len(order) == 1 and order[0] in direct:
            return direct[order[0]]
        arm = union(*(arms[name] for name in order)) if len(order) > 1 else arms[order[0]]
        return _cards.c.id.in_(select(*arm.subquery("named").c))

    is_open = _live.c.state.in_([literal_column(f"'{state}'") for state in OPEN_STATES])
    in_time = _live.c.deadline_at > bindparam("now")
    # PostgreSQL: a card's open calls, one aggregate row per card. The deadline is tested in
    # the aggregate, not in WHERE: the NAS's and the reaper's open-call indexes require a
    # column set that only a condition on it in WHERE implies (revision 0007), so the generic
    # plan can only read the card's own index. With the deadline in WHERE, statistics taken
    # while few calls were open made their whole scans look as cheap, and with 20,000 calls
    # open each card then cost about 3 ms, not 10 µs.
    open_of_card = (
        select(
            func.count(_live.c.id).filter(in_time).label("open_count"),
            func.coalesce(func.sum(_live.c.reserved_amount).filter(in_time), 0).label("reserved"),
        )
        .where(_live.c.card_id == _cards.c.id, is_open)
        .lateral("open_calls")
    )

    def read(lookups: frozenset[str]) -> Any:
        """The cards an authorization batch names, with the ANI each was named by and its rate
        group's version; on PostgreSQL with their open calls too."""
        source = _cards.join(_groups, _groups.c.id == _cards.c.rate_group_id)
        if "anis" in lookups:
            source = source.outerjoin(
                _binds, and_(_binds.c.card_id == _cards.c.id, among(_binds.c.ani, "anis", String))
            )
            bound_ani = _binds.c.ani.label("bound_ani")
        else:
            bound_ani = null().label("bound_ani")
        columns: list[Any] = [*_CARD_COLUMNS, bound_ani, _groups.c.rates_version]
        if postgresql_arrays:
            columns += [open_of_card.c.open_count, open_of_card.c.reserved]
            source = source.join(open_of_card, true())
        found = select(*columns).select_from(source).where(named(lookups)).order_by(_cards.c.id)
        return hot(found) if postgresql_arrays else found

    def sets(lookups: tuple[str, ...]) -> list[frozenset[str]]:
        return [
            frozenset(chosen)
            for size in range(1, len(lookups) + 1)
            for chosen in itertools.combinations(lookups, size)
        ]

    # The reads name the authorizations' cards only: the accounting events' cards (by token)
    # are locked with the others, and read with their calls (``calls``).
    cards = {lookups: read(lookups) for lookups in sets(CARD_LOOKUPS[:-1])}
    # SQLite: the open calls of the cards a batch uses, after reading them (no locks there:
    # one writer at a time).
    open_calls = (
        select(
            _live.c.card_id,
            func.count(_live.c.id).label("open_count"),
            func.coalesce(func.sum(_live.c.reserved_amount), 0).label("reserved"),
        )
        .where(among(_live.c.card_id, "card_ids", BigInteger), is_open, in_time)
        .group_by(_live.c.card_id)
    )
    call = select(
        *(_cards.c[key].label(f"of_card_{key}") for key in _ACCT_CARD_KEYS),
        *_live.c,
        select(_nas.c.boot_epoch)
        .where(_nas.c.id == _live.c.nas_id)
        .scalar_subquery()
        .label("boot_epoch"),
    ).join_from(_live, _cards, _live.c.card_id == _cards.c.id)
    calls = call.where(among(_live.c.token, "tokens", String)).order_by(_live.c.id)
    if postgresql_arrays:
        # Each call locked as it is found (its card is locked already, by ``locks``).
        calls = each(
            "tokens",
            String,
            lambda token: call.where(_live.c.token == token).with_for_update(of=_live),
        )
        locks = {
            lookups: hot(
                select(_cards.c.id)
                .where(named(lookups))
                .order_by(_cards.c.id)
                .with_for_update(of=_cards)
            )
            for lookups in sets(CARD_LOOKUPS)
        }
        return _BatchStatements(cards, locks, None, hot(calls))
    return _BatchStatements(cards, None, open_calls, calls)


# The accounting's statements. A call's card is locked before its live session, the order that
# authorization and the reaper use too, so two transactions never wait for each other in a cycle;
# the live session is read again under its own lock once the card is held, so the newest committed
# version (a Stop that another process just billed, say) is the one decided on.
_cdrs = cast(Table, Cdr.__table__)
_ledger = cast(Table, LedgerEntry.__table__)
_nas = cast(Table, NasClient.__table__)
#: The card's columns that accounting reads and may change.
_ACCT_CARD_KEYS = (
    "id serial card_type state balance rate_group_id validity_days expires_at activated_at "
    "first_used_at"
).split()
_ACCT_CARD_COLUMNS = [_cards.c[key] for key in _ACCT_CARD_KEYS]
NAS_EPOCH = hot(select(_nas.c.boot_epoch).where(_nas.c.id == bindparam("nas_id")))
_CALL_CARD = (
    select(*_ACCT_CARD_COLUMNS, _live.c.id.label("live_id"))
    .join_from(_cards, _live, _live.c.card_id == _cards.c.id)
    .with_for_update(of=_cards)
)
#: A call's card, locked, found by the token the NAS echoes in Class; with the NAS's boot epoch,
#: so the packet's session key costs no round trip of its own.
CARD_OF_TOKEN = hot(
    _CALL_CARD.add_columns(NAS_EPOCH.scalar_subquery().label("boot_epoch")).where(
        _live.c.token == bindparam("token")
    )
)
CARD_OF_KEY = hot(_CALL_CARD.where(_live.c.session_key == bindparam("key")))
CARD_OF_CALL = hot(_CALL_CARD.where(_live.c.id == bindparam("live_id")))
CALL_FOR_UPDATE = hot(select(_live).where(_live.c.id == bindparam("live_id")).with_for_update())
#: Grants never started, past their deadline, released ``chunk`` at a time (see Store.reap):
#: those a request holds now are skipped, and the state is checked again under the lock.
RELEASE_STALE = (
    update(_live)
    .where(_live.c.state == "authorized")
    .where(
        _live.c.id.in_(
            select(_live.c.id)
            .where(_live.c.state == "authorized")
            .where(_live.c.deadline_at <= bindparam("now"))
            .order_by(_live.c.deadline_at)
            .limit(bindparam("chunk"))
            .with_for_update(skip_locked=True)
        )
    )
    .values(state="released", closed_at=bindparam("now"))
)
CARD_BRIEF = select(_cards.c.id, _cards.c.serial, _cards.c.balance, _cards.c.rate_group_id)
CDR_OF_SESSION = hot(select(_cdrs.c.id).where(_cdrs.c.session_key == bindparam("key")))
CDR_OF_CALL = hot(select(_cdrs.c.id).where(_cdrs.c.call_key == bindparam("key")))
INSERT_CDR = hot(insert(_cdrs).returning(_cdrs.c.id))
INSERT_LEDGER = hot(insert(_ledger))
_CDR_KEYS = (
    "call_key session_key card_id nas_id acct_session_id conf_id leg auth_method calling_number "
    "called_number rate_prefix price_per_minute connection_fee started_at stopped_at "
    "duration_seconds billed_seconds granted_seconds cost balance_after over_grant close_reason "
    "terminate_cause created_at"
).split()
_new_cdr = (
    insert(_cdrs)
    .values({key: bindparam(key, type_=_cdrs.c[key].type) for key in _CDR_KEYS})
    .returning(_cdrs.c.id, _cdrs.c.card_id, _cdrs.c.cost, _cdrs.c.balance_after, _cdrs.c.created_at)
    .cte("new_cdr")
)
#: A billed call's CDR and, when it cost something, its ledger entry, in one statement
#: (PostgreSQL: the CDR's insert is a data-modifying CTE), so neither needs a round trip.
CDR_AND_LEDGER = hot(
    insert(_ledger).from_select(
        ["card_id", "kind", "amount", "balance_after", "cdr_id", "note", "created_at"],
        select(
            _new_cdr.c.card_id,
            literal_column("'call'"),
            -_new_cdr.c.cost,
            _new_cdr.c.balance_after,
            _new_cdr.c.id,
            literal_column("''"),
            _new_cdr.c.created_at,
        ).where(_new_cdr.c.cost != 0),
    )
)
#: One UPDATE by primary key per table; the columns set are those the parameters name.
_UPDATE_BY_ID = {
    table: hot(update(table).where(table.c.id == bindparam("b_id"))) for table in (_cards, _live)
}

#: By database: True for PostgreSQL. ``locks``: every card a batch names (by PIN hash, card
#: number, bound ANI, or a call's token), locked in id order so two batches never wait for each
#: other in a cycle (SQLite has one writer anyway). ``cards``: the cards the authorizations
#: name (not by token), with the ANI each was named by, its rate group's ``rates_version`` and
#: (PostgreSQL) its open calls, read after the locks are held, so (READ COMMITTED) every grant
#: committed by whoever held a card before is seen. ``open_calls`` (SQLite): the open calls of
#: the cards a batch uses. ``calls``: the calls (and their cards' accounting columns) the
#: batch's accounting events name by token, locked.
BATCH = {True: _batch_statements(True), False: _batch_statements(False)}


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    card_failure_limit: int = 5


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    start_timeout_seconds: int = 120
    stale_margin_seconds: int = 300
    closed_session_retention_days: int = 30


@dataclass(frozen=True, slots=True)
class Identified:
    card_id: int | None
    method: str  # pin, card, ani
    failure: RejectReason | None = None  # a wrong PIN, an unknown card, ...
    counts_as_guess: bool = False  # a failure that a PIN guesser would cause
    serial: str | None = None
    event: str | None = None  # the security event to record


@dataclass(frozen=True, slots=True)
class ReapResult:
    released: int  # grants that never saw a Start
    closed: int  # started calls with no news, billed from the last progress
    purged: int  # finished calls past the retention period
    live: int = 0  # calls still live (granted or started) afterwards


def _card_snapshot(card: Any) -> CardSnapshot:
    """A card row (ORM object or result row) as the domain sees it."""
    return CardSnapshot(
        card_id=card.id,
        serial=str(card.serial),
        card_type=CardType(card.card_type),
        state=CardState(card.state),
        locked=card.locked,
        balance=card.balance,
        max_calls=card.max_calls,
        activation_mode=ActivationMode(card.activation_mode),
        validity_days=card.validity_days,
        expires_at=card.expires_at,
        first_used_at=card.first_used_at,
        currency=card.currency,
    )


class _Card:
    """A card row read under its lock, for the decisions of one batch: its values, changed in
    place (and written) as the batch goes."""

    def __init__(self, row: Any) -> None:
        self.__dict__.update(row._mapping)

    def update(self, conn: Connection, changes: dict[str, Any]) -> None:
        self.__dict__.update(changes)
        _write(conn, _UPDATE_BY_ID[_cards], {"b_id": self.id, **changes})

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


def _rate_of(session: _Changing) -> Rate:
    """The rate fixed at a call's authorization."""
    return Rate(
        prefix=session["rate_prefix"],
        price_per_minute=session["price_per_minute"],
        connection_fee=session["connection_fee"],
        first_increment=session["first_increment"],
        next_increment=session["next_increment"],
        grace_seconds=session["grace_seconds"],
    )


_LIVE_KEYS = tuple(column.key for column in _live.c)


def _picker(row: Any, names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of ``names`` (two or more: ``itemgetter`` of one gives the value, not a
    tuple) from a row shaped as ``row`` (the same result), by position, without a lookup by
    name per value."""
    assert len(names) > 1
    position = {name: index for index, name in enumerate(row._fields)}
    return cast(
        Callable[[Any], tuple[Any, ...]], operator.itemgetter(*(position[n] for n in names))
    )


class _Changing:
    """A row read under its lock: its values, changed in place, then written back at once."""

    __slots__ = ("table", "values", "changed")

    def __init__(self, table: Table, row: Any, keys: Iterable[str] | None = None) -> None:
        mapping = row._mapping
        self.table = table
        self.values: dict[str, Any] = {k: mapping[k] for k in (keys or mapping.keys())}
        self.changed: dict[str, Any] = {}

    @classmethod
    def of(cls, table: Table, values: dict[str, Any]) -> _Changing:
        changing = cls.__new__(cls)
        changing.table, changing.values, changing.changed = table, values, {}
        return changing

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self.values[key] != value:
            self.values[key] = value
            self.changed[key] = value

    def save(self, conn: Connection) -> None:
        """One UPDATE of the changed columns (none when nothing changed)."""
        if self.changed:
            _write(conn, _UPDATE_BY_ID[self.table], {"b_id": self.values["id"], **self.changed})
            self.changed = {}


def _write(conn: Connection, statement: Any, params: dict[str, Any]) -> None:
    """A write whose result is not read: deferred on the hot path (see ``HotConnection.defer``),
    so it travels with the transaction's next statement or its COMMIT; at once elsewhere."""
    defer = getattr(conn, "defer", None)
    if defer is not None:
        defer(statement, params)
    else:
        conn.execute(statement, params)


def session_key(
    nas_id: int, boot_epoch: int, acct_session_id: str | None, conf_id: str | None
) -> str | None:
    """The NAS's own identity of a call: NAS, its boot epoch and Acct-Session-Id (else conf id).

    The boot epoch changes on Accounting-On/Off, so a rebooted NAS that reuses an
    Acct-Session-Id starts a new call instead of colliding with an old one.
    """
    ident = acct_session_id or conf_id
    if not ident:
        return None
    raw = f"{nas_id}\x1f{boot_epoch}\x1f{ident}".encode()
    return hashlib.sha256(raw).hexdigest()


class Store:
    def __init__(
        self,
        db: Database,
        pin_key: bytes,
        limits: Limits,
        security: SecurityPolicy,
        sessions: SessionPolicy,
        token_factory: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self.db = db
        self._hash_pin = make_pin_hasher(pin_key)
        self.limits = limits
        self.security = security
        self.sessions = sessions
        self._new_token = token_factory
        self._rates = RateCache()

    # ------------------------------------------------------------------ NAS clients
    def load_nas_clients(self) -> list[Nas]:
        with self.db.transaction() as s:
            rows = s.scalars(select(NasClient).order_by(NasClient.id)).all()
            return [
                Nas(
                    id=r.id,
                    name=r.name,
                    address=r.address,
                    secret=r.secret.encode(),
                    profile=r.profile,
                    require_message_authenticator=r.require_message_authenticator,
                    message_authenticator_seen=r.message_authenticator_seen,
                )
                for r in rows
            ]

    def mark_message_authenticator_seen(self, nas_id: int) -> None:
        with self.db.transaction() as s:
            s.execute(
                update(NasClient)
                .where(NasClient.id == nas_id)
                .values(message_authenticator_seen=True)
            )

    def record_security_event(
        self, kind: str, nas_id: int | None, calling_number: str, now: datetime
    ) -> None:
        with self.db.transaction() as s:
            s.add(
                SecurityEvent(
                    kind=kind, nas_id=nas_id, calling_number=calling_number, created_at=now
                )
            )

    # ------------------------------------------------------------------ batches
    def process(
        self,
        auths: Sequence[tuple[AuthRequest, datetime]],
        accts: Sequence[tuple[AcctEvent, datetime]],
    ) -> tuple[list[AuthResult | Exception], list[AcctResult | Exception]]:
        """Authorize and account for a batch of requests in one transaction.

        Every card the batch may touch is locked first, in one statement and in card order, so
        two batches (in this process or another) never wait for each other in a cycle. Then the
        authorizations are decided, in order, then the accounting events applied, in order:
        each sees what the ones before it in the batch did (a second authorization on a card
        sees the first one's reservation), exactly as in transactions of their own one after
        the other. An authorization does not see the money a Stop in the same batch releases:
        as if the Stop had come a moment later.

        A unique key that refuses a write (another process opened or billed the same call at
        the same moment) runs the batch again; it then finds the call. When the batch fails
        with an error the database reported (rather than a lost connection), each request is
        run again in its own transaction, so one bad request costs only itself: its result is
        the exception. A single request's error is raised.
        """
        if not auths and not accts:
            return [], []
        try:
            for attempt in range(3):
                try:
                    return self.db.run(lambda conn: self._process(conn, auths, accts))
                except IntegrityError:
                    # Another process opened or billed the same call at the same moment: the
                    # unique keys refused the second copy. Run again; it now finds the call.
                    if attempt == 2:
                        raise
        except DBAPIError as exc:
            if len(auths) + len(accts) == 1 or not _reported_by_database(exc):
                raise
        return (
            [_or_error(self.authorize, req, now) for req, now in auths],
            [_or_error(self.account, ev, now) for ev, now in accts],
        )

    def _process(
        self,
        conn: Connection,
        auths: Sequence[tuple[AuthRequest, datetime]],
        accts: Sequence[tuple[AcctEvent, datetime]],
    ) -> tuple[list[AuthResult | Exception], list[AcctResult | Exception]]:
        # Locks every card of the batch (the accounting's too) before anything else.
        auth_results: list[AuthResult | Exception] = list(self._authorize_many(conn, auths, accts))
        acct_results: list[AcctResult | Exception] = list(self._account_many(conn, accts))
        return auth_results, acct_results

    # ------------------------------------------------------------------ authorization
    def authorize(self, req: AuthRequest, now: datetime) -> AuthResult:
        """Identify the card, decide, and reserve the grant — one short transaction."""
        (result,), _ = self.process([(req, now)], [])
        if isinstance(result, Exception):
            raise result
        return result

    def _authorize_many(
        self,
        conn: Connection,
        auths: Sequence[tuple[AuthRequest, datetime]],
        accts: Sequence[tuple[AcctEvent, datetime]] = (),
    ) -> list[AuthResult]:
        """Identify the cards, decide each request in turn, and reserve the grants.

        The server's hot path, the same for one request or a batch. On PostgreSQL one round
        trip: the cards locked, then read with their rate groups' versions and their open
        calls, two statements in one message. On SQLite two reads (the cards; their open
        calls). Then the rates from memory (:class:`~billing.storage.rates.RateCache`), the
        decisions, in order, each seeing the grants made before it in the batch, and the
        writes, which travel with the commit (PostgreSQL). ``accts``: the batch's accounting
        events, whose cards are locked here too, in the same id order; with no
        authorizations the locks travel with :meth:`_account_many`'s read of the calls.
        """
        statements = BATCH[not self.db.is_sqlite]
        # What each request would look its card up by, found by asking :meth:`_identify` with
        # no card known: every lookup it makes then is one it may make with the cards read.
        wanted: dict[str, set[Any]] = {"pin_hash": set(), "serial": set(), "ani": set()}

        def want(kind: str, value: Any) -> None:
            wanted[kind].add(value)

        for req, _ in auths:
            self._identify(conn, req, want)
        lookups = {
            "pin_hashes": sorted(wanted["pin_hash"]),
            "serials": sorted(wanted["serial"]),
            "anis": sorted(wanted["ani"]),
            "tokens": sorted({ev.token for ev, _ in accts if ev.token and ev.leg != "other"}),
        }
        params = {name: values for name, values in lookups.items() if values}
        if params and statements.locks is not None:
            # The locks go in the same message as the read below (or, for accounting alone,
            # as the calls' read): PostgreSQL takes them, then runs the read with a snapshot
            # of its own, so it sees every grant committed by whoever held a card before.
            _write(conn, statements.locks[frozenset(params)], params)
        if not auths:
            return []
        params.pop("tokens", None)  # the accounting's cards are read with their calls
        read = statements.cards[frozenset(params)] if params else None
        read_params: dict[str, Any] = dict(params)
        if read is not None and statements.locks is not None:
            read_params["now"] = min(now for _, now in auths)
        cards: dict[int, _Card] = {}
        found: dict[str, dict[Any, _Card]] = {"pin_hash": {}, "serial": {}, "ani": {}}
        open_calls: dict[int, list[Any]] = {}
        rows = conn.execute(read, read_params) if read is not None else ()
        for row in rows:
            card = cards.get(row.id) or cards.setdefault(row.id, _Card(row))
            found["pin_hash"][row.pin_hash] = card
            found["serial"][row.serial] = card
            if row.bound_ani is not None:
                found["ani"][row.bound_ani] = card
            if statements.locks is not None:
                open_calls[row.id] = [int(row.open_count), Decimal(row.reserved)]
        identified = [
            self._identify(conn, req, lambda kind, value: found[kind].get(value))
            for req, _ in auths
        ]
        used = {card.id: card for card, _ in identified if card is not None}
        if statements.open_calls is not None and used:
            open_calls = {card_id: [0, ZERO] for card_id in used}
            rows = conn.execute(
                statements.open_calls,
                {"card_ids": sorted(used), "now": min(now for _, now in auths)},
            )
            for row in rows:
                open_calls[row.card_id] = [int(row.open_count), Decimal(row.reserved)]
        results: list[AuthResult] = []
        for (req, now), (caller, ident) in zip(auths, identified, strict=True):
            if ident.failure is not None:
                if ident.counts_as_guess:
                    _write(
                        conn,
                        SECURITY_EVENT,
                        {
                            "kind": ident.event or "unknown-pin",
                            "nas_id": req.nas_id,
                            "calling_number": req.calling_number,
                            "card_id": ident.card_id,
                            "created_at": now,
                        },
                    )
                results.append(Rejected(ident.failure, ident.serial))
                continue
            assert caller is not None
            rate = self._rates.rate(
                conn, caller.rate_group_id, caller.rates_version, req.called_number
            )
            calls = open_calls[caller.id]
            results.append(self._grant(conn, req, now, caller, ident.method, rate, calls))
        return results

    def _identify(
        self, conn: Connection, req: AuthRequest, find: Callable[[str, Any], _Card | None]
    ) -> tuple[_Card | None, Identified]:
        """Which card calls, and how: by bound ANI, by PIN, or by card number and PIN.

        ``find(kind, value)`` is the card whose ``pin_hash``, ``serial`` or bound ``ani`` is
        ``value``. A wrong PIN for a card number counts against the card (locked at
        ``card_failure_limit``); the change is made to ``card`` and written.
        """
        user = req.user_name.strip()
        if req.calling_number and (not user or user == req.calling_number):
            card = find("ani", req.calling_number)
            if card is not None:
                return card, Identified(card.id, "ani")
            if not user or req.password in (None, "", user):
                return None, Identified(None, "ani", RejectReason.UNKNOWN_ACCOUNT)
        if not user:
            return None, Identified(None, "pin", RejectReason.UNKNOWN_ACCOUNT)
        password = req.password or ""
        if password in ("", user):
            if looks_like_pin(user):
                card = find("pin_hash", self._hash_pin(user))
                if card is not None:
                    return card, Identified(card.id, "pin")
            return None, Identified(None, "pin", RejectReason.UNKNOWN_ACCOUNT, counts_as_guess=True)
        # Card number + PIN.
        card = find("serial", int(user)) if user.isdigit() and len(user) <= 18 else None
        if card is None:
            return None, Identified(
                None, "card", RejectReason.INVALID_CARD_NUMBER, counts_as_guess=True
            )
        if card.pin_hash != self._hash_pin(password):
            changes: dict[str, Any] = {"failed_pin_count": card.failed_pin_count + 1}
            lock = changes["failed_pin_count"] >= self.security.card_failure_limit
            if lock and not card.locked:
                changes.update(locked=True, lock_reason="pin-attack")
            card.update(conn, changes)
            return None, Identified(
                card.id,
                "card",
                RejectReason.INVALID_PASSWORD,
                True,
                serial=str(card.serial),
                event="card-locked" if "locked" in changes else "wrong-pin",
            )
        if card.failed_pin_count:
            card.update(conn, {"failed_pin_count": 0})
        return card, Identified(card.id, "card")

    def _grant(
        self,
        conn: Connection,
        req: AuthRequest,
        now: datetime,
        card: _Card,
        method: str,
        rate: Rate | None,
        calls: list[Any],
    ) -> AuthResult:
        """Decide on one call and reserve its grant; ``calls`` (the card's open calls and what
        they reserve) counts the grant, for the next request of the batch on the same card."""
        decision = decide(
            _card_snapshot(card),
            rate,
            live_calls=calls[0],
            reserved_by_others=calls[1],
            now=now,
            limits=self.limits,
        )
        serial = str(card.serial)
        if not isinstance(decision, Grant):
            return Rejected(decision.reason, serial)
        calls[0] += 1
        calls[1] += decision.reserved_amount
        token = self._new_token()
        _write(
            conn,
            INSERT_GRANT,
            {
                "token": token,
                "card_id": card.id,
                "nas_id": req.nas_id,
                "auth_method": method,
                "acct_session_id": req.acct_session_id,
                "conf_id": req.conf_id,
                "calling_number": req.calling_number,
                "called_number": req.called_number,
                "rate_prefix": decision.rate.prefix,
                "price_per_minute": decision.rate.price_per_minute,
                "connection_fee": decision.rate.connection_fee,
                "first_increment": decision.rate.first_increment,
                "next_increment": decision.rate.next_increment,
                "grace_seconds": decision.rate.grace_seconds,
                "granted_seconds": decision.seconds,
                "reserved_amount": decision.reserved_amount,
                "authorized_at": now,
                "last_update_at": now,
                "deadline_at": now + timedelta(seconds=self.sessions.start_timeout_seconds),
            },
        )
        return Accepted(
            token=token,
            serial=serial,
            session_seconds=decision.seconds,
            available_amount=decision.available_amount,
            currency=card.currency,
            auth_method=method,
        )

    # ------------------------------------------------------------------ accounting
    def account(self, ev: AcctEvent, now: datetime) -> AcctResult:
        """Apply one accounting event; safe to call again with the same event (retries).

        A batch of its own (:meth:`process`). A connection the database dropped is retried
        once on a fresh one by :meth:`Database.run`.
        """
        _, (result,) = self.process([], [(ev, now)])
        if isinstance(result, Exception):
            raise result
        return result

    def _account(self, conn: Connection, ev: AcctEvent, now: datetime) -> AcctResult:
        """A call the server authorized costs a handful of statements: its card found and locked
        by token (or session key), its live session re-read under lock, then the writes."""
        if ev.status in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
            return self._nas_restarted(conn, ev, now)
        found = None
        if ev.token and ev.leg != "other":
            found = conn.execute(CARD_OF_TOKEN, {"token": ev.token, "nas_id": ev.nas_id}).first()
        epoch = (
            found.boot_epoch if found is not None else conn.scalar(NAS_EPOCH, {"nas_id": ev.nas_id})
        )
        key = session_key(ev.nas_id, epoch or 0, ev.acct_session_id, ev.conf_id)
        if ev.leg == "other":
            return self._other_leg(conn, ev, key, now)
        if found is None and key is not None:
            found = conn.execute(CARD_OF_KEY, {"key": key}).first()
        if found is None:
            live_id = self._find_grant(conn, ev)
            if live_id is None:
                if key is not None and conn.scalar(CDR_OF_SESSION, {"key": key}) is not None:
                    # Billed long ago; its live row is already purged.
                    return AcctResult("duplicate")
                live_id = self._open_unauthorized(conn, ev, key, now)
                if live_id is None:
                    return AcctResult("unmatched")
            found = conn.execute(CARD_OF_CALL, {"live_id": live_id}).one()
        card = _Changing(_cards, found, _ACCT_CARD_KEYS)
        live = _Changing(_live, conn.execute(CALL_FOR_UPDATE, {"live_id": found.live_id}).one())
        return self._apply(conn, ev, now, card, live, key)

    def _account_many(
        self, conn: Connection, accts: Sequence[tuple[AcctEvent, datetime]]
    ) -> list[AcctResult]:
        """The accounting events of a batch, whose cards are locked already.

        The calls the server authorized (found by the token in Class) are read in one
        statement, locked, and each event applied to its call in turn, in memory (a Start and a
        Stop of one call in the same batch see each other), the writes sent with the next
        statement or the commit. Every other event (no token, another leg, a NAS restart) then
        goes :meth:`_account`'s way, after the first ones' writes, so it reads what they wrote.
        """
        fast = {
            ev.token for ev, _ in accts if ev.token and ev.leg != "other" and ev.status in _CALL
        }
        found: dict[str, Any] = {}
        if fast:
            statement = BATCH[not self.db.is_sqlite].calls
            found = {row.token: row for row in conn.execute(statement, {"tokens": sorted(fast)})}
        results: list[AcctResult | None] = [None] * len(accts)
        cards: dict[int, _Changing] = {}
        calls: dict[int, _Changing] = {}
        card_of = live_of = None  # a row's card and call values, by position (same for all)
        for index, (ev, now) in enumerate(accts):
            row = found.get(ev.token) if ev.token in fast and ev.leg != "other" else None
            if row is None or row.nas_id != ev.nas_id or ev.status not in _CALL:
                continue
            if card_of is None or live_of is None:
                card_of = _picker(row, [f"of_card_{key}" for key in _ACCT_CARD_KEYS])
                live_of = _picker(row, _LIVE_KEYS)
            card = cards.get(row.card_id)
            if card is None:
                values = dict(zip(_ACCT_CARD_KEYS, card_of(row), strict=True))
                card = cards[row.card_id] = _Changing.of(_cards, values)
            live = calls.get(row.id)
            if live is None:
                values = dict(zip(_LIVE_KEYS, live_of(row), strict=True))
                live = calls[row.id] = _Changing.of(_live, values)
            key = session_key(ev.nas_id, row.boot_epoch or 0, ev.acct_session_id, ev.conf_id)
            results[index] = self._apply(conn, ev, now, card, live, key)
        return [
            result if result is not None else self._account(conn, ev, now)
            for result, (ev, now) in zip(results, accts, strict=True)
        ]

    def _apply(
        self,
        conn: Connection,
        ev: AcctEvent,
        now: datetime,
        card: _Changing,
        live: _Changing,
        key: str | None,
    ) -> AcctResult:
        """An event on its call, both locked (card first); every change is written."""
        serial = str(card["serial"])
        if live["state"] == "closed":
            return AcctResult("duplicate", serial)
        if live["session_key"] is None and key is not None:
            live["session_key"] = key
        if live["acct_session_id"] is None:
            live["acct_session_id"] = ev.acct_session_id
        if live["conf_id"] is None:
            live["conf_id"] = ev.conf_id
        if ev.status == AcctStatus.STOP:
            cdr_cost = self._close(conn, live, card, ev, now, "stop")
            return AcctResult("billed", serial, cdr_cost)
        self._mark_started(live, card, ev)
        if ev.status == AcctStatus.INTERIM and ev.session_seconds is not None:
            live["session_seconds"] = max(live["session_seconds"], ev.session_seconds)
        remaining = max(0, live["granted_seconds"] - live["session_seconds"])
        live["last_update_at"] = now
        live["deadline_at"] = now + timedelta(
            seconds=remaining + self.sessions.stale_margin_seconds
        )
        card.save(conn)
        live.save(conn)
        return AcctResult("started" if ev.status == AcctStatus.START else "updated", serial)

    def _find_grant(self, conn: Connection, ev: AcctEvent) -> int | None:
        """A grant not yet tied to accounting: match the NAS's identifiers sent at authorization."""
        grants = (
            select(_live.c.id)
            .where(_live.c.nas_id == ev.nas_id)
            .where(_live.c.state == "authorized")
            .where(_live.c.session_key.is_(None))
            .order_by(_live.c.id.desc())
            .limit(1)
        )
        for column, value in (
            (_live.c.acct_session_id, ev.acct_session_id),
            (_live.c.conf_id, ev.conf_id),
        ):
            if value:
                found = conn.scalar(grants.where(column == value))
                if found is not None:
                    return int(found)
        if ev.called_number:
            # Last resort for a NAS that echoes nothing: its most recent open grant for the same
            # caller and destination.
            found = conn.scalar(
                grants.where(_live.c.calling_number == ev.calling_number).where(
                    _live.c.called_number == ev.called_number
                )
            )
            return int(found) if found is not None else None
        return None

    def _card_for_accounting(self, conn: Connection, ev: AcctEvent) -> Any:
        """Who pays for a call that was never authorized here (Stop without any grant)."""
        user = ev.user_name.strip()
        if ev.calling_number and (not user or user == ev.calling_number):
            card = conn.execute(
                CARD_BRIEF.join(_binds, _binds.c.card_id == _cards.c.id).where(
                    _binds.c.ani == ev.calling_number
                )
            ).first()
            if card is not None:
                return card
        if user and looks_like_pin(user):
            card = conn.execute(CARD_BRIEF.where(_cards.c.pin_hash == self._hash_pin(user))).first()
            if card is not None:
                return card
        if user.isdigit() and len(user) <= 18:
            return conn.execute(CARD_BRIEF.where(_cards.c.serial == int(user))).first()
        return None

    def _open_unauthorized(
        self, conn: Connection, ev: AcctEvent, key: str | None, now: datetime
    ) -> int | None:
        """Open a call the server never authorized (lost grant, other server, reaped grant).

        It is rated at today's rate for its destination and flagged as over its (zero) grant.
        """
        if key is None:
            return None
        card = self._card_for_accounting(conn, ev)
        if card is None:
            return None
        rate = rate_for(conn, card.rate_group_id, ev.called_number)
        return int(
            conn.execute(
                insert(_live).returning(_live.c.id),
                {
                    "token": key,
                    "session_key": key,
                    "card_id": card.id,
                    "nas_id": ev.nas_id,
                    "state": "authorized",
                    "auth_method": "none",
                    "acct_session_id": ev.acct_session_id,
                    "conf_id": ev.conf_id,
                    "calling_number": ev.calling_number,
                    "called_number": ev.called_number,
                    "rate_prefix": rate.prefix if rate else "",
                    "price_per_minute": rate.price_per_minute if rate else ZERO,
                    "connection_fee": rate.connection_fee if rate else ZERO,
                    "first_increment": rate.first_increment if rate else 1,
                    "next_increment": rate.next_increment if rate else 1,
                    "grace_seconds": rate.grace_seconds if rate else 0,
                    "granted_seconds": 0,
                    "reserved_amount": ZERO,
                    "session_seconds": 0,
                    "authorized_at": ev.event_at,
                    "last_update_at": now,
                    "deadline_at": now + timedelta(seconds=self.sessions.stale_margin_seconds),
                },
            ).scalar_one()
        )

    def _mark_started(self, live: _Changing, card: _Changing, ev: AcctEvent) -> None:
        live["state"] = "started"
        if live["started_at"] is None:
            started = ev.event_at
            if ev.status != AcctStatus.START and ev.session_seconds:
                started = ev.event_at - timedelta(seconds=ev.session_seconds)
            live["started_at"] = started
            self._first_use(card, started)

    def _first_use(self, card: _Changing, started_at: datetime) -> None:
        """The card's first call starts its validity period (and activates first-use cards)."""
        if card["first_used_at"] is not None:
            return
        card["first_used_at"] = started_at
        if card["validity_days"]:
            from_first_use = started_at + timedelta(days=card["validity_days"])
            if card["expires_at"] is None or from_first_use < card["expires_at"]:
                card["expires_at"] = from_first_use
        if card["state"] == CardState.INACTIVE:
            card["state"] = CardState.ACTIVE.value
            card["activated_at"] = started_at

    def _close(
        self,
        conn: Connection,
        live: _Changing,
        card: _Changing,
        ev: AcctEvent | None,
        now: datetime,
        reason: str,
    ) -> Decimal:
        """Rate, debit, write the CDR and the ledger entry, release the reservation.

        ``card`` and ``live`` must be locked (card first); every change to them is written here.
        """
        seconds = live["session_seconds"]
        stopped_at = ev.event_at if ev is not None else now
        if ev is not None and ev.session_seconds is not None:
            seconds = max(seconds, ev.session_seconds)
        elif ev is not None and live["started_at"] is not None:
            seconds = max(seconds, int((stopped_at - live["started_at"]).total_seconds()))
        seconds = max(0, seconds)
        started_at = live["started_at"] or (stopped_at - timedelta(seconds=seconds))
        if live["started_at"] is None:
            live["started_at"] = started_at
            self._first_use(card, started_at)
        rate = _rate_of(live)
        unlimited = card["card_type"] == CardType.UNLIMITED
        call_cost = (
            round_money(ZERO, self.limits.places)
            if unlimited
            else cost(rate, seconds, self.limits.places)
        )
        balance = round_money(card["balance"] - call_cost, self.limits.places)
        card["balance"] = balance
        if card["card_type"] == CardType.DISPOSABLE and seconds > 0:
            card["state"] = CardState.RETIRED.value
        elif card["card_type"] == CardType.STANDARD and balance <= 0:
            card["state"] = CardState.EXHAUSTED.value
        card.save(conn)
        cdr = {
            "call_key": live["token"],
            "session_key": live["session_key"],
            "card_id": card["id"],
            "nas_id": live["nas_id"],
            "acct_session_id": live["acct_session_id"],
            "conf_id": live["conf_id"],
            "leg": "billed",
            "auth_method": live["auth_method"],
            "calling_number": live["calling_number"] or (ev.calling_number if ev else ""),
            "called_number": live["called_number"] or (ev.called_number if ev else ""),
            "rate_prefix": live["rate_prefix"],
            "price_per_minute": live["price_per_minute"],
            "connection_fee": live["connection_fee"],
            "started_at": started_at,
            "stopped_at": stopped_at,
            "duration_seconds": seconds,
            "billed_seconds": billed_seconds(rate, seconds),
            "granted_seconds": live["granted_seconds"],
            "cost": call_cost,
            "balance_after": balance,
            "over_grant": seconds > live["granted_seconds"],
            "close_reason": reason,
            "terminate_cause": ev.terminate_cause if ev is not None else None,
            "created_at": now,
        }
        if getattr(conn, "defer", None) is not None:
            # PostgreSQL's hot path: the CDR and its ledger entry in one statement, sent with
            # the next statement or the commit.
            _write(conn, CDR_AND_LEDGER, cdr)
        else:
            cdr_id = conn.execute(INSERT_CDR, cdr).scalar_one()
            if call_cost != 0:
                conn.execute(
                    INSERT_LEDGER,
                    {
                        "card_id": card["id"],
                        "kind": "call",
                        "amount": -call_cost,
                        "balance_after": balance,
                        "cdr_id": cdr_id,
                        "note": "",
                        "created_at": now,
                    },
                )
        live["state"] = "closed"
        live["session_seconds"] = seconds
        live["closed_at"] = now
        live["last_update_at"] = now
        live["reserved_amount"] = ZERO
        live.save(conn)
        return call_cost

    def _other_leg(
        self, conn: Connection, ev: AcctEvent, key: str | None, now: datetime
    ) -> AcctResult:
        """The leg a multi-leg profile does not bill: a zero-cost record of its Stop, once."""
        if ev.status != AcctStatus.STOP or key is None:
            return AcctResult("leg")
        if conn.scalar(CDR_OF_CALL, {"key": key}) is not None:
            return AcctResult("duplicate")
        billed = None
        if ev.token:
            billed = conn.execute(select(_live).where(_live.c.token == ev.token)).first()
        if billed is None and ev.conf_id:
            billed = conn.execute(
                select(_live)
                .where(_live.c.nas_id == ev.nas_id)
                .where(_live.c.conf_id == ev.conf_id)
                .order_by(_live.c.id.desc())
                .limit(1)
            ).first()
        card = (
            conn.execute(CARD_BRIEF.where(_cards.c.id == billed.card_id)).first()
            if billed is not None
            else self._card_for_accounting(conn, ev)
        )
        if card is None:
            return AcctResult("unmatched")
        seconds = ev.session_seconds or 0
        conn.execute(
            insert(_cdrs),
            {
                "call_key": key,
                "session_key": None,
                "card_id": card.id,
                "nas_id": ev.nas_id,
                "acct_session_id": ev.acct_session_id,
                "conf_id": ev.conf_id,
                "leg": "other",
                "auth_method": billed.auth_method if billed else "none",
                "calling_number": ev.calling_number,
                "called_number": ev.called_number,
                "rate_prefix": billed.rate_prefix if billed else "",
                "price_per_minute": ZERO,
                "connection_fee": ZERO,
                "started_at": ev.event_at - timedelta(seconds=seconds),
                "stopped_at": ev.event_at,
                "duration_seconds": seconds,
                "billed_seconds": 0,
                "granted_seconds": billed.granted_seconds if billed else 0,
                "cost": round_money(ZERO, self.limits.places),
                "balance_after": card.balance,
                "over_grant": False,
                "close_reason": "stop",
                "terminate_cause": ev.terminate_cause,
                "created_at": now,
            },
        )
        return AcctResult("leg", str(card.serial))

    def _nas_restarted(self, conn: Connection, ev: AcctEvent, now: datetime) -> AcctResult:
        """Accounting-On/Off: the NAS lost its calls. Close them from what is known."""
        conn.execute(
            update(_nas).where(_nas.c.id == ev.nas_id).values(boot_epoch=_nas.c.boot_epoch + 1)
        )
        ids = conn.scalars(
            select(_live.c.id)
            .where(_live.c.nas_id == ev.nas_id)
            .where(_live.c.state.in_(OPEN_STATES))
            .order_by(_live.c.card_id, _live.c.id)
        ).all()
        closed = self._close_many(conn, list(ids), now, "nas-restart")
        return AcctResult("nas-restart", closed_calls=closed)

    def _close_many(self, conn: Connection, ids: list[int], now: datetime, reason: str) -> int:
        """Bill the started calls among ``ids`` and release their grants never started."""
        closed = 0
        for live_id in ids:
            card = _Changing(
                _cards, conn.execute(CARD_OF_CALL, {"live_id": live_id}).one(), _ACCT_CARD_KEYS
            )
            live = _Changing(_live, conn.execute(CALL_FOR_UPDATE, {"live_id": live_id}).one())
            if live["state"] == "started":
                self._close(conn, live, card, None, now, reason)
                closed += 1
            elif live["state"] == "authorized":
                live["state"] = "released"  # a late Start reopens it
                live["closed_at"] = now
                live.save(conn)
                closed += 1
        return closed

    # ------------------------------------------------------------------ reaper
    def reap(self, now: datetime, chunk: int = RELEASE_CHUNK) -> ReapResult:
        """Release grants never started, bill calls whose Stop never came, purge old rows.

        Grants never started are released set-based, ``chunk`` at a time, each chunk its own
        short transaction: releasing one costs nothing and changes no card, so neither the
        card nor the grant is read first. A grant a request holds at that moment (a late Start
        taking it up) is skipped, not waited for, and its state checked again under the lock:
        the reaper never holds up a request, and several server processes reaping at once
        share the work instead of queueing on each other's rows. (One at a time, with its card
        locked, fifty thousand grants left by an authorization flood took a server process
        tens of seconds in one transaction.) Calls that were started are billed one by one,
        card first, as a Stop would bill them.
        """
        released = 0
        params = {"now": now, "chunk": chunk}
        while True:
            done = int(self.db.run(lambda conn: conn.execute(RELEASE_STALE, params).rowcount))
            released += done
            if done < chunk:
                break
        return self.db.run(lambda conn: self._reap(conn, now, released))

    def _reap(self, conn: Connection, now: datetime, released: int) -> ReapResult:
        """Bill the started calls gone silent, purge finished calls past the retention."""
        stale = conn.scalars(
            select(_live.c.id)
            .where(_live.c.state == "started")
            .where(_live.c.deadline_at <= now)
            .order_by(_live.c.card_id, _live.c.id)
        ).all()
        closed = self._close_many(conn, list(stale), now, "reaped")
        cutoff = now - timedelta(days=self.sessions.closed_session_retention_days)
        deleted = conn.execute(
            delete(_live)
            .where(_live.c.state.in_(("closed", "released")))
            .where(_live.c.closed_at < cutoff)
        )
        live = conn.scalar(select(func.count(_live.c.id)).where(_live.c.state.in_(OPEN_STATES)))
        return ReapResult(
            released=released, closed=closed, purged=int(deleted.rowcount or 0), live=int(live or 0)
        )


def _reported_by_database(exc: DBAPIError) -> bool:
    """Whether the database answered with this error (it is up; the request is at fault), as
    opposed to a connection that failed, where trying each request again would only wait
    again."""
    if exc.connection_invalidated:
        return False
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "pgcode", None) is not None


def _or_error(work: Callable[[Any, datetime], Any], item: Any, now: datetime) -> Any:
    try:
        return work(item, now)
    except SQLAlchemyError as exc:
        return exc


def store_from_settings(settings: Settings, db: Database) -> Store:
    """The store the server and ``prepaidctl`` both use, configured from the settings."""
    billing = settings["billing"]
    return Store(
        db,
        pin_key=load_or_create_pin_key(settings.pin_key_file),
        limits=Limits(
            max_session_seconds=int(billing["max_session_seconds"]),
            places=settings.money_places,
        ),
        security=SecurityPolicy(card_failure_limit=int(settings["security"]["card_failure_limit"])),
        sessions=SessionPolicy(
            start_timeout_seconds=int(billing["start_timeout_seconds"]),
            stale_margin_seconds=int(billing["stale_margin_seconds"]),
            closed_session_retention_days=int(billing["closed_session_retention_days"]),
        ),
    )
