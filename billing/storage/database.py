"""Engines and transactions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers (the server and ``prepaidctl``) queue instead of failing
on a lock upgrade. PostgreSQL uses row locks (``SELECT ... FOR UPDATE`` on the card); a
connection the database dropped is noticed on use and the work retried once on a fresh one
(:meth:`Database.run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

import schema

T = TypeVar("T")
E = TypeVar("E", bound=Executable)


class SchemaNotReady(RuntimeError):
    """The database has no schema, or an older one: run ``prepaidctl db upgrade``."""


def make_engine(
    url: str,
    pool_size: int = 10,
    echo: bool = False,
    sqlite_busy_seconds: float = 30.0,
    generic_plans: bool = False,
) -> Engine:
    """The engine for ``url``.

    ``generic_plans`` (PostgreSQL, with the server's prepared statements): every connection
    starts with ``plan_cache_mode = force_generic_plan``, so a prepared statement is planned once
    per connection. Left to choose, PostgreSQL re-plans the authorization's open-calls-and-rate
    statement (40 parameters) at every execution once there are a thousand rates, 0.17 ms of
    database CPU each time, more than running it. It only concerns statements prepared with
    ``PREPARE``: everything else psycopg2 sends with its values inline, planned every time. It
    is a startup parameter (no round trip, not undone by a rollback), which PgBouncer refuses
    unless told to ignore it: behind PgBouncer, prepared statements are off anyway.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": sqlite_busy_seconds, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself, below
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_seconds * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 3,
            "application_name": f"prepaid-aaa[{os.getpid()}]",
            **({"options": "-c plan_cache_mode=force_generic_plan"} if generic_plans else {}),
        },
    )


class Database:
    """An engine plus a session factory; ``transaction()`` is the unit of work."""

    def __init__(self, engine: Engine, prepared_statements: bool = True) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
        # The hot path (see HotConnection) on PostgreSQL; SQLAlchemy for everything on SQLite.
        self._hot = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg2"
        self._prepare = prepared_statements
        self._plans: dict[tuple[int, tuple[str, ...]], _Plan | None] = {}
        self._held = threading.local()  # each thread's connection for run(), see _held_connection

    @classmethod
    def from_url(
        cls,
        url: str,
        pool_size: int = 10,
        echo: bool = False,
        sqlite_busy_seconds: float = 30.0,
        prepared_statements: bool = True,
    ) -> Database:
        engine = make_engine(
            url, pool_size, echo, sqlite_busy_seconds, generic_plans=prepared_statements
        )
        return cls(engine, prepared_statements)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction on a Core connection.

        Connections are not pinged before use (a round trip per request); instead, when the
        database turns out to have dropped the connection (a restart, a failover), the pool is
        renewed and ``work`` runs once more on a fresh connection.

        On PostgreSQL the transaction is the :class:`HotConnection`'s own: ``BEGIN`` travels
        with the first statement and ``COMMIT`` with the last writes. Anything raised inside
        ``work``, or by the commit, rolls it back.
        """
        for attempt in (1, 2):
            try:
                if not self._hot:
                    with self.engine.begin() as conn:
                        return work(conn)
                # A run inside a run on this thread takes a connection of its own from the
                # pool: the held one is in the middle of the outer transaction.
                nested = getattr(self._held, "busy", False)
                conn = self.engine.connect() if nested else self._held_connection()
                # The driver's own flag, not SQLAlchemy's AUTOCOMMIT isolation level, whose
                # reset on return to the pool costs a round trip (a SET) per transaction.
                dbapi_conn = conn.connection.dbapi_connection
                assert dbapi_conn is not None
                dbapi_conn.autocommit = True
                hot = HotConnection(conn, self._plans, self._prepare)
                self._held.busy = True
                try:
                    if self._prepare and _replan_due(conn.connection.info):
                        hot.replan()
                    result = work(cast(Connection, hot))
                    hot.commit()
                except BaseException:
                    hot.rollback()
                    raise
                finally:
                    self._held.busy = nested
                    hot.close()
                    self._release(conn, dbapi_conn, held=not nested)
                return result
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _held_connection(self) -> Connection:
        """This thread's connection for :meth:`run` on PostgreSQL, kept checked out between
        transactions: a checkout and return through the pool cost the server about 6 % of its
        CPU at 1,000 requests/s, where most batches are one or two requests. A thread holds at
        most one (the reactor's, and each worker thread's that runs transactions), fewer than
        the pool's size."""
        conn: Connection | None = getattr(self._held, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._held.conn = self.engine.connect()
        return conn

    def _release(self, conn: Connection, dbapi_conn: Any, held: bool = True) -> None:
        """After a transaction, the connection as the pool would have it back: SQLAlchemy's own
        transaction (of statements that went its way) ended, the driver's flag reset; the held
        one kept, any other returned to the pool. A connection the database dropped, or left
        in a transaction, is closed; the next transaction takes a fresh one."""
        broken = conn.invalidated or dbapi_conn.closed
        if not broken and dbapi_conn.info.transaction_status != _IDLE:
            conn.invalidate()  # a transaction left open (its ROLLBACK failed): never reused
            broken = True
        if broken or not held:
            if not broken:
                dbapi_conn.autocommit = False
            conn.close()
            if held:
                self._held.conn = None
            return
        if conn.in_transaction():
            conn.rollback()  # nothing is sent: the driver is in autocommit, the work committed
        dbapi_conn.autocommit = False

    def check_schema(self) -> None:
        """Raise :class:`SchemaNotReady` unless the migrations are at head."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                raise SchemaNotReady("the database has no schema: run `prepaidctl db upgrade`")
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        if version != schema.HEAD:
            raise SchemaNotReady(
                f"the database schema is at {version}, not {schema.HEAD}: "
                "run `prepaidctl db upgrade`"
            )

    def dispose(self) -> None:
        conn = getattr(self._held, "conn", None)
        if conn is not None:
            conn.close()
            self._held.conn = None
        self.engine.dispose()


# ---------------------------------------------------------------------------- the hot path
_HOT: dict[int, Executable] = {}

#: A connection's prepared statements are planned again after its 256th transaction, then
#: after twice as many each time, up to about 16 million (see :meth:`HotConnection.replan`).
REPLAN_FIRST = 256
REPLAN_LAST = 1 << 24


def _replan_due(info: dict[str, Any]) -> bool:
    """Whether the connection's transactions have doubled since its prepared statements were
    planned (counted in the connection's ``info``); see :meth:`HotConnection.replan`."""
    runs = info.get("prepaid_runs", 0) + 1
    info["prepaid_runs"] = runs
    if runs < info.get("prepaid_replan_at", REPLAN_FIRST) or runs > REPLAN_LAST:
        return False
    info["prepaid_replan_at"] = runs * 2
    return True


def hot(statement: E) -> E:
    """Mark a module-level statement as the server's hot path (see :class:`HotConnection`)."""
    _HOT[id(statement)] = statement  # held for ever, so its id is never reused
    return statement


class _Row(tuple):  # type: ignore[type-arg]
    """A result row: by position, by attribute, and as ``_mapping``; ``_fields`` are the names
    by position (like SQLAlchemy's)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))


def _row_class(keys: list[str]) -> type[_Row]:
    names: dict[str, Any] = {"__slots__": (), "_fields": tuple(keys)}
    for position, key in enumerate(keys):
        names.setdefault(key, property(operator.itemgetter(position)))
    return type("Row", (_Row,), names)


class _Result:
    """What a hot statement returns: the rows fetched, with the Result methods the store uses."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (
                NoResultFound("expected one row")
                if not self._rows
                else MultipleResultsFound("expected one row")
            )
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def all(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


@dataclass(slots=True)
class _Plan:
    sql: str  # pyformat SQL, or EXECUTE of the prepared statement
    prepare: str | None  # the PREPARE to run once per connection, if prepared
    names: list[str]  # the parameters, in the order of the positional EXECUTE
    defaults: dict[str, Any]  # values fixed in the statement (constants)
    row: type[_Row] | None  # None: no rows returned
    types: list[Any]  # the result columns' SQLAlchemy types
    binds: list[Any] | None  # the parameters' bind processors, when any has one
    processors: list[Any] | None = (
        None  # their result processors, once the driver's types are known
    )
    packed: _Plan | None = None  # the same statement with its parameters in one (see _pack)
    many: _Many | None = None  # the packed statement for several rows at once (see _many)


@dataclass(slots=True)
class _Many:
    """A packed ``INSERT`` or ``UPDATE`` by id for several rows in one execution: its one
    ``jsonb`` parameter is an array of packed rows (see :meth:`HotConnection.defer`)."""

    plan: _Plan
    writes: frozenset[str]  # the tables it writes
    creates: frozenset[str]  # the tables it inserts rows into
    parents: frozenset[str]  # the tables that the rows it inserts refer to
    key: int | None  # an UPDATE's: the id's position in a row; rows of one execution differ in it
    shared: tuple[int, ...]  # an INSERT's values outside its rows: equal in one execution

    def conflicts(self, other: _Many) -> bool:
        """Whether the two cannot change order: they write the same table, or one inserts
        rows the other's rows may refer to."""
        return bool(
            self.writes & other.writes
            or self.creates & other.parents
            or other.creates & self.parents
        )


@dataclass(slots=True)
class _Rows:
    """Deferred writes of one statement, sent as one execution."""

    plan: _Plan  # the statement's plan (its ``many`` is set)
    rows: list[list[Any]]  # packable values (see _packable), in the order deferred
    keys: set[Any]  # an UPDATE's ids

    def take(self, row: list[Any]) -> bool:
        """Add ``row`` if it may go in the same execution."""
        many = cast(_Many, self.plan.many)
        if many.key is not None:
            if row[many.key] in self.keys:
                return False  # the same row twice: the second update must come after
            self.keys.add(row[many.key])
        elif self.rows and any(row[i] != self.rows[0][i] for i in many.shared):
            return False
        self.rows.append(row)
        return True


#: What a packed parameter's values may be, and how each goes into the JSON array; a value of
#: any other type (a float, which may be NaN, or a datetime with a time zone) is sent the usual
#: way.
_JSON_VALUE: dict[type, Callable[[Any], Any] | None] = {
    str: None,
    int: None,
    bool: None,
    type(None): None,
    Decimal: str,
    date: date.isoformat,
}
#: Minimum parameters for a statement to be packed: below it, the saving is noise (unless its
#: deferred writes may go as one execution, see :func:`_many`).
PACK_MIN = 4
_UNPACKABLE = object()


#: The base type a packed parameter of each SQLAlchemy type is cast to; subclasses first.
_PG_CASTS: tuple[tuple[type, str], ...] = (
    (sqltypes.Boolean, "boolean"),
    (sqltypes.BigInteger, "bigint"),
    (sqltypes.SmallInteger, "smallint"),
    (sqltypes.Integer, "integer"),
    (sqltypes.Float, "double precision"),
    (sqltypes.Numeric, "numeric"),
    (sqltypes.Date, "date"),
    (sqltypes.String, "text"),
)


def _pg_cast(type_: Any, dialect: Any) -> str | None:
    """The PostgreSQL type a packed parameter is cast to: the column's base type, without
    length or precision (a ``varchar(64)`` column still refuses a longer value, a
    ``numeric(18, 6)`` one still rounds, as with a parameter of the column's type); None when
    the parameter cannot be packed."""
    while isinstance(type_, sqltypes.TypeDecorator):
        type_ = type_.load_dialect_impl(dialect)
    if isinstance(type_, sqltypes.DateTime):
        return "timestamptz" if type_.timezone else "timestamp"
    if isinstance(type_, sqltypes.Enum) and type_.native_enum:
        return None  # a PostgreSQL enum type of its own
    for kind, cast_to in _PG_CASTS:
        if isinstance(type_, kind):
            return cast_to
    return None


_UNPLANNED: Any = object()
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open (psycopg2's TRANSACTION_STATUS_IDLE)


class HotConnection:
    """A Core connection on which the server's hot statements skip SQLAlchemy's execution layer,
    and a transaction costs as few round trips as its reads allow.

    On PostgreSQL, SQLAlchemy's per-execution work (building parameters, result metadata, row
    objects) cost the server more CPU than psycopg2 itself: measured on an authorization, about
    1.4 ms of client CPU against 0.5 ms for the same statements on the bare cursor. A statement
    marked with :func:`hot` is compiled by SQLAlchemy once per set of parameter names and then
    executed on the DBAPI cursor; with ``prepare`` it is also ``PREPARE``d once per database
    connection, so PostgreSQL parses and plans it once (about a quarter less database CPU per
    authorization). Any other statement, and everything on SQLite (whose driver returns floats
    for NUMERIC: SQLAlchemy's result processing is needed there), goes through SQLAlchemy.
    Errors are raised as SQLAlchemy's, a dropped connection invalidated, exactly as SQLAlchemy
    would, so :meth:`Database.run` retries the same way. While the engine has event listeners
    or echoes SQL, every statement goes through SQLAlchemy, so they see all of them.

    Round trips: each one costs the client 30 to 45 µs of CPU on a bare psycopg2 connection (a
    thread switch more in the server), PostgreSQL its own share, and a Stop used to take eight
    (``BEGIN``, six statements, ``COMMIT``). The connection runs in the driver's autocommit
    mode and the transaction is spelled out here instead: ``BEGIN`` is sent in the same
    message as the first statement; a write whose result nobody reads
    (:meth:`defer`) waits and goes out with the next statement, or with the ``COMMIT`` (one
    simple-query message of several statements; PostgreSQL runs them in order and stops at the
    first error). A deferred write's error therefore surfaces at that later statement, still
    inside the transaction, which is then rolled back as a whole. Statements that go through
    SQLAlchemy (and any other use of the underlying connection) first send what is waiting, so
    they run inside the transaction and in order.

    Parameters: psycopg2 quotes each one on its own, about 2 µs apiece, which made quoting the
    largest single item of the server's profile. A prepared statement of ``PACK_MIN`` or more
    parameters is therefore prepared a second way, with one ``jsonb`` parameter whose elements
    are cast back to the columns' base types (``(($1->>0)::text)``, ...): its values go as one
    JSON array, numbers and times as text, exactly (see :func:`_pack`). A value JSON cannot
    carry as is (a time with a zone, bytes) sends that execution the usual way.

    Behind a connection pooler in transaction mode (PgBouncer), where a session's prepared
    statements do not follow it, set ``[database] prepared_statements = false``.
    """

    def __init__(
        self,
        conn: Connection,
        plans: dict[tuple[int, tuple[str, ...]], _Plan | None],
        prepare: bool,
    ) -> None:
        self._conn = conn
        self._plans = plans
        self._prepare = prepare
        self._cursor: Any = None
        self._begun = False  # BEGIN sent
        self._pending: list[bytes | _Rows] = []  # deferred writes, in order

    def __getattr__(self, name: str) -> Any:
        # Anything else used on the connection runs inside the transaction, after what waits.
        self._sync()
        return getattr(self._conn, name)

    def scalar(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        return self.execute(statement, params).scalar()

    def execute(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        plan = self._plan(statement, params)
        if plan is None:
            self._sync()
            return self._conn.execute(statement, params)
        assert params is not None
        cursor = self._send(self._mogrify(plan, params))
        if plan.row is None:
            return _Result([], cursor.rowcount)
        raw = cursor.fetchall()
        if plan.processors is None:
            plan.processors = [
                t._cached_result_processor(self._conn.dialect, d[1])
                for t, d in zip(plan.types, cursor.description, strict=True)
            ]
        if any(plan.processors):
            raw = [
                tuple(p(v) if p else v for p, v in zip(plan.processors, r, strict=True))
                for r in raw
            ]
        return _Result([plan.row(r) for r in raw], cursor.rowcount)

    def defer(self, statement: Executable, params: dict[str, Any]) -> None:
        """Run a write whose result is not read: with the next statement, or at the commit.

        Rows it returns (an INSERT's implicit ``RETURNING`` of its key) are not read.

        Writes of one packed ``INSERT``, or of one ``UPDATE`` by id, go as one execution for
        all their rows (:func:`_many`): a batch's grants are one ``INSERT``, its Stops' CDRs
        another. PostgreSQL starts and ends a statement once instead of once per row, which
        took 43 to 51 µs of its CPU per inserted grant against 70 to 75 row by row, and the
        server quotes one JSON text. A write joins an earlier one of its statement when every
        write between them may change places with it (:meth:`_Many.conflicts`: another table,
        and neither inserts rows the other's rows refer to); any other deferred statement
        keeps its place between them. Each table's writes therefore keep their order, and an
        ``UPDATE`` of a row that the execution updates already starts an execution of its
        own, after it. A write that cannot be packed goes on its own, in its place.
        """
        plan = self._plan(statement, params)
        if plan is None:
            self.execute(statement, params)
            return
        if plan.many is not None:
            row = _packable(self._values(plan, params))
            if row is not None:
                self._join(plan, plan.many, row)
                return
        self._pending.append(self._mogrify(plan, params))

    def _join(self, plan: _Plan, many: _Many, row: list[Any]) -> None:
        for waiting in reversed(self._pending):
            if not isinstance(waiting, _Rows):
                break  # nothing moves before a statement of its own
            if waiting.plan is plan and waiting.take(row):
                return
            if cast(_Many, waiting.plan.many).conflicts(many):
                break
        rows = _Rows(plan, [], set())
        rows.take(row)
        self._pending.append(rows)

    def replan(self) -> None:
        """Drop this connection's prepared statements, before the transaction sends anything:
        each is prepared and planned again at its next use.

        A generic plan is made once, with the statistics of its moment, and kept until the
        table is analyzed again. A plan made while ``live_sessions`` was young (a new
        installation's first calls) may scan it, and the table can grow a hundredfold in the
        minute before autovacuum analyzes it. A new plan takes the table's size from its file
        as it is now, so planning again each time the connection's transactions double keeps
        every plan within about twice the size it was made for. It costs a ``DEALLOCATE`` and
        a ``PREPARE`` per statement, seventeen times in the connection's first sixteen million
        transactions, then never again.
        """
        if self._conn.connection.info.pop("prepaid_prepared", None):
            self._run(b"DEALLOCATE ALL")

    def commit(self) -> None:
        """Send what waits and ``COMMIT``, in one message (nothing when nothing was sent)."""
        if self._begun or self._pending:
            self._send(b"COMMIT")
            self._begun = False

    def rollback(self) -> None:
        """``ROLLBACK`` if the database holds a transaction open for this connection."""
        self._pending = []
        self._begun = False
        if self._conn.invalidated or self._conn.closed:
            return
        dbapi_conn = self._conn.connection.dbapi_connection
        if dbapi_conn is None or dbapi_conn.closed:
            return
        if dbapi_conn.info.transaction_status != _IDLE:
            with contextlib.suppress(self._conn.dialect.loaded_dbapi.Error):
                with contextlib.closing(dbapi_conn.cursor()) as cursor:
                    cursor.execute("ROLLBACK")

    def close(self) -> None:
        if self._cursor is not None:
            with contextlib.suppress(self._conn.dialect.loaded_dbapi.Error):
                self._cursor.close()
            self._cursor = None

    # -------------------------------------------------------------- internals
    def _plan(self, statement: Executable, params: dict[str, Any] | None) -> _Plan | None:
        """The statement's plan, prepared on this connection; None for SQLAlchemy's path."""
        conn = self._conn
        if (
            params is None
            or id(statement) not in _HOT
            or conn._has_events
            or conn.engine._has_events
            or conn._echo
        ):
            # Listeners and echo see every statement as SQLAlchemy executes it.
            return None
        key = (id(statement), tuple(params))
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plans[key] = self._compile(statement, list(params))
        if plan is not None and plan.packed is None:
            self._prepared(plan)  # (one that may be packed is prepared in _mogrify)
        return plan

    def _prepared(self, plan: _Plan) -> None:
        """``PREPARE`` the plan's statement on this connection, once."""
        if plan.prepare is None:
            return
        prepared: set[str] = self._conn.connection.info.setdefault("prepaid_prepared", set())
        if plan.prepare not in prepared:
            self._run(plan.prepare)
            prepared.add(plan.prepare)

    def _values(self, plan: _Plan, params: dict[str, Any]) -> list[Any]:
        values = [params[n] if n in params else plan.defaults[n] for n in plan.names]
        if plan.binds is not None:
            values = [b(v) if b else v for b, v in zip(plan.binds, values, strict=True)]
        return values

    def _mogrify(self, plan: _Plan, params: dict[str, Any]) -> bytes:
        """The statement with its values, as PostgreSQL will receive it."""
        values = self._values(plan, params)
        if plan.packed is not None:
            packed = _pack(values)
            if packed is not None:
                plan, values = plan.packed, [packed]
            self._prepared(plan)
        return self._bind(plan, values)

    def _bind(self, plan: _Plan, values: list[Any]) -> bytes:
        args: Any = (
            values if plan.prepare is not None else dict(zip(plan.names, values, strict=True))
        )
        try:
            return cast(bytes, self._raw_cursor().mogrify(plan.sql, args))
        except self._conn.dialect.loaded_dbapi.Error as exc:
            self._raise(exc, plan.sql, args)

    def _rows_sql(self, rows: _Rows) -> bytes:
        """Deferred rows of one statement as one execution (one row: the packed statement)."""
        if len(rows.rows) == 1:
            plan, packed = cast(_Plan, rows.plan.packed), json.dumps(rows.rows[0])
        else:
            plan, packed = cast(_Many, rows.plan.many).plan, json.dumps(rows.rows)
        self._prepared(plan)
        return self._bind(plan, [packed])

    def _send(self, last: bytes | None) -> Any:
        """One message: ``BEGIN`` if not yet sent, the deferred writes, then ``last``."""
        parts = [p if isinstance(p, bytes) else self._rows_sql(p) for p in self._pending]
        if not self._begun:
            parts.insert(0, b"BEGIN")
        if last is not None:
            parts.append(last)
        self._pending = []
        self._begun = True
        return self._run(b"; ".join(parts))

    def _sync(self) -> None:
        """Before SQLAlchemy uses the connection: the transaction begun, nothing waiting."""
        if not self._begun or self._pending:
            self._send(None)

    def _raw_cursor(self) -> Any:
        if self._cursor is None:
            dbapi_conn = self._conn.connection.dbapi_connection
            assert dbapi_conn is not None  # a live connection: checked out, not invalidated
            self._cursor = dbapi_conn.cursor()
        return self._cursor

    def _run(self, sql: bytes | str) -> Any:
        cursor = self._raw_cursor()
        try:
            cursor.execute(sql)
        except self._conn.dialect.loaded_dbapi.Error as exc:
            self._raise(exc, sql.decode(errors="replace") if isinstance(sql, bytes) else sql, ())
        return cursor

    def _raise(self, exc: Exception, sql: str, params: Any) -> NoReturn:
        """A driver error raised as SQLAlchemy's own handling raises it: the matching exception
        class, and on a disconnect the connection (and the pool's older ones) invalidated."""
        cursor, self._cursor = self._cursor, None  # SQLAlchemy closes it
        self._conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise AssertionError("unreachable: SQLAlchemy raised")

    def _compile(self, statement: Executable, keys: list[str]) -> _Plan | None:
        """The statement's plan, or None when it needs SQLAlchemy's execution (expanding
        parameters): then it simply runs through SQLAlchemy."""
        dialect = self._conn.dialect
        compiled = cast(
            SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect, column_keys=keys)
        )
        if compiled.post_compile_params or compiled.literal_execute_params:
            return None
        everything = compiled.construct_params({k: None for k in keys}, _check=False)
        defaults = {k: v for k, v in everything.items() if k not in keys}
        sql = compiled.string
        names = re.findall(r"%\((\w+)\)s", sql)
        result_columns = compiled._result_columns or []
        columns = [c[0] for c in result_columns]
        types = [c[3] for c in result_columns]
        row = _row_class(columns) if columns else None
        if not self._prepare:
            return _Plan(sql, None, names, defaults, row, types, _binds(compiled, names))
        order = list(dict.fromkeys(names))
        binds = _binds(compiled, order)
        plan = _prepared_plan(
            re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m.group(1)) + 1}", sql),
            order,
            defaults,
            row,
            types,
            binds,
        )
        casts = [_pg_cast(compiled.binds[n].type, dialect) for n in order]
        if None not in casts:
            unpacked = {n: f"(($1->>{i})::{casts[i]})" for i, n in enumerate(order)}
            body = re.sub(r"%\((\w+)\)s", lambda m: unpacked[m.group(1)], sql)
            plan.many = _many(statement, body, row, types)
            if len(order) >= PACK_MIN or plan.many is not None:
                plan.packed = _prepared_plan(
                    body, ["packed"], {}, row, types, None, declare="jsonb"
                )
        return plan


#: A packed expression: ``(($1->>3)::numeric)``.
_PACKED_VALUE = r"\(\(\$1->>(\d+)\)::[a-z ]+\)"
_PACKED_VALUES = re.compile(rf"{_PACKED_VALUE}(?:, {_PACKED_VALUE})*")
_UPDATE_BY_ID = re.compile(
    r"UPDATE (?P<table>\w+) SET (?P<set>.+) "
    r"WHERE (?P=table)\.id = \(\(\$1->>(?P<key>\d+)\)::bigint\)"
)
_ROW = "paaa_row"


def _many(
    statement: Executable, body: str, row: type[_Row] | None, types: list[Any]
) -> _Many | None:
    """The packed statement ``body`` for several rows at once, when it is an ``INSERT`` of one
    row (``VALUES``, possibly inside a ``WITH``) or an ``UPDATE`` of one row by its id;
    None for any other.

    The parameter becomes an array of rows, read with ``jsonb_array_elements``: an
    ``INSERT``'s ``VALUES (...)`` becomes ``SELECT ... FROM`` the rows, and any value outside
    it is taken from the first row (rows whose such values differ go in separate executions);
    an ``UPDATE`` joins the rows by id, and also names its ids as ``id = ANY (...)``, so the
    table is read by its primary key whatever the estimate of the rows' number.
    """
    table = getattr(statement, "table", None)
    metadata = getattr(table, "metadata", None)
    if metadata is None:
        return None
    rows = f"jsonb_array_elements($1) AS {_ROW}(v)"

    def of_row(sql: str) -> str:
        return sql.replace("$1->>", f"{_ROW}.v->>")

    def of_first(sql: str) -> str:
        return sql.replace("$1->>", "$1->0->>")

    def parents(names: set[str]) -> frozenset[str]:
        return frozenset(
            fk.column.table.name for name in names for fk in metadata.tables[name].foreign_keys
        )

    update = _UPDATE_BY_ID.fullmatch(body)
    if update is not None:
        name, sets, key = update["table"], update["set"], int(update["key"])
        if name not in metadata.tables or re.search(r"(?:^|, )id=", sets):
            return None
        # Built from the compiled statement's text; every value is in the one parameter.
        ids = f"ARRAY(SELECT ((v->>{key})::bigint) FROM jsonb_array_elements($1) AS r(v))"  # noqa: S608
        joined = f"{name}.id = (({_ROW}.v->>{key})::bigint) AND {name}.id = ANY ({ids})"
        many = f"UPDATE {name} SET {of_row(sets)} FROM {rows} WHERE {joined}"  # noqa: S608
        plan = _prepared_plan(many, ["packed"], {}, row, types, None, declare="jsonb")
        return _Many(plan, frozenset({name}), frozenset(), parents({name}), key, ())
    created = set(re.findall(r"INSERT INTO (\w+) ", body))
    if not body.lstrip("(").startswith(("INSERT INTO ", "WITH ")) or not created:
        return None
    if body.count("VALUES (") != 1 or not created <= set(metadata.tables):
        return None
    start = body.index("VALUES (") + len("VALUES (")
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(body[end], 0)
        end += 1
    values = body[start : end - 1]
    if not _PACKED_VALUES.fullmatch(values):
        return None
    before, after = body[: start - len("VALUES (")], body[end:]
    shared = tuple(sorted({int(i) for i in re.findall(r"\$1->>(\d+)", before + after)}))
    many = f"{of_first(before)}SELECT {of_row(values)} FROM {rows}{of_first(after)}"  # noqa: S608
    plan = _prepared_plan(many, ["packed"], {}, row, types, None, declare="jsonb")
    return _Many(plan, frozenset(created), frozenset(created), parents(created), None, shared)


def _prepared_plan(
    body: str,
    names: list[str],
    defaults: dict[str, Any],
    row: type[_Row] | None,
    types: list[Any],
    binds: list[Any] | None,
    declare: str | None = None,
) -> _Plan:
    """The plan of a statement ``PREPARE``d as ``body`` (with ``$n`` parameters); ``declare``:
    the type of its one parameter, when it is given."""
    name = "paaa_" + hashlib.sha1(body.encode()).hexdigest()[:16]  # noqa: S324 - a name
    prepare = f"PREPARE {name}{f'({declare})' if declare else ''} AS {body.replace('%%', '%')}"
    execute = f"EXECUTE {name} ({', '.join(['%s'] * len(names))})" if names else f"EXECUTE {name}"
    return _Plan(execute, prepare, names, defaults, row, types, binds)


def _pack(values: list[Any]) -> str | None:
    """The values as one JSON array, or None when one of them does not go into JSON as is.

    psycopg2 adapts each parameter on its own (about 2 µs each): the 19 of a grant took 36 µs
    of the server's CPU, one JSON text 9.5 µs, and PostgreSQL spends no more on reading them
    back (52 against 54 µs per insert of a grant). Numbers and times go as text, exactly."""
    out = _packable(values)
    return None if out is None else json.dumps(out)


def _packable(values: list[Any]) -> list[Any] | None:
    """The values as they go into the JSON array (see :func:`_pack`), or None."""
    out = []
    for value in values:
        convert = _JSON_VALUE.get(type(value), _UNPACKABLE)
        if convert is None:
            out.append(value)
        elif convert is _UNPACKABLE:
            if type(value) is not datetime or value.tzinfo is not None:
                return None
            out.append(value.isoformat())
        else:
            out.append(convert(value))  # type: ignore[operator]
    return out


def _binds(compiled: Any, names: list[str]) -> list[Any] | None:
    processors = [compiled._bind_processors.get(name) for name in names]
    return processors if any(processors) else None
