"""Engines and transactions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers (the server and ``prepaidctl``) queue instead of failing
on a lock upgrade. PostgreSQL uses row locks (``SELECT ... FOR UPDATE`` on the card); a
connection the database dropped is noticed on use and the work retried once on a fresh one
(:meth:`Database.run`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

import schema

T = TypeVar("T")


class SchemaNotReady(RuntimeError):
    """The database has no schema, or an older one: run ``prepaidctl db upgrade``."""


def make_engine(
    url: str, pool_size: int = 10, echo: bool = False, sqlite_busy_seconds: float = 30.0
) -> Engine:
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
        connect_args={"connect_timeout": 3, "application_name": f"prepaid-aaa[{os.getpid()}]"},
    )


class Database:
    """An engine plus a session factory; ``transaction()`` is the unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)

    @classmethod
    def from_url(
        cls, url: str, pool_size: int = 10, echo: bool = False, sqlite_busy_seconds: float = 30.0
    ) -> Database:
        return cls(make_engine(url, pool_size, echo, sqlite_busy_seconds))

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
        """
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

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
        self.engine.dispose()
