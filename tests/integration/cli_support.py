"""Shared helpers for the ``prepaidctl`` integration tests of the lifecycle and reports.

The same pattern as ``test_admin_cli.py``: one fresh database per backend and module (SQLite: a
temporary file; PostgreSQL: a uniquely named database, dropped at the end), ``prepaidctl`` run
in-process, and calls written through the real billing path (:class:`Store`, the code the server
runs). PostgreSQL unreachable: skipped, unless PREPAID_TEST_REQUIRE_SERVICES=1 (then failed).

The fixtures (``cli_backend``, ``make_ctl``, ``ctl``) are in ``conftest.py``, module-scoped, so
that every module gets its own databases.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import typer
import typer.testing
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from admin_cli.main import app
from billing.calls import Accepted, AcctEvent, AcctStatus, AuthRequest, utc_from_epoch
from billing.domain import Limits
from billing.storage.database import Database
from billing.storage.store import SecurityPolicy, SessionPolicy, Store

PG_URL = os.environ.get(
    "PREPAID_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("PREPAID_TEST_REQUIRE_SERVICES") == "1"

HEADER = (
    "prefix,description,price_per_minute,connection_fee,first_increment,next_increment,"
    "grace_seconds"
)
RATES = (
    HEADER
    + """
44,United Kingdom,0.07,0.05,30,6,0
4420,London,0.05,0.05,30,6,0
1,NANP,0.02,0,60,60,0
"""
)
UK = "447700900123"  # 0.07/min, fee 0.05, 30/6: a 125 s call costs 0.1970


class Backend:
    """Makes fresh, empty databases of one kind and drops them at the end."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self._pg_admin = None
        self._pg_names: list[str] = []
        if kind == "postgresql":
            admin_url = make_url(PG_URL).set(database="postgres")
            engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                engine.dispose()
                message = f"PostgreSQL is not reachable at {PG_URL}: {exc}"
                if REQUIRE_SERVICES:
                    pytest.fail(message + " (PREPAID_TEST_REQUIRE_SERVICES=1)")
                pytest.skip(message)
            self._pg_admin = engine

    def new_database(self) -> str:
        if self.kind == "sqlite":
            path = self.root / f"db-{uuid.uuid4().hex[:8]}" / "prepaid.sqlite3"
            return f"sqlite:///{path}"
        assert self._pg_admin is not None
        name = f"paaa_cli_{uuid.uuid4().hex[:12]}"
        with self._pg_admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self._pg_names.append(name)
        return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self._pg_admin is None:
            return
        with self._pg_admin.connect() as conn:
            for name in self._pg_names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._pg_admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
"""Parameters of the ``cli_backend`` fixture (``conftest.py``)."""


_COMMAND: Any = None


def _command(_app: Any = None) -> Any:
    global _COMMAND
    if _COMMAND is None:
        _COMMAND = typer.main.get_command(app)
    return _COMMAND


class _Runner(CliRunner):
    """typer's test runner, building the click command once (it costs most of an invocation)."""

    def invoke(self, *args: Any, **kwargs: Any) -> Result:
        if not hasattr(typer.testing, "_get_command"):  # another typer: the slow way
            return super().invoke(*args, **kwargs)
        with mock.patch.object(typer.testing, "_get_command", _command):
            return super().invoke(*args, **kwargs)


class Ctl:
    """Runs ``prepaidctl`` in-process against one database and state directory."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.url = url
        self.state_dir = state_dir
        self.env: dict[str, str | None] = {
            "PREPAID_DATABASE_URL": url,
            "PREPAID_SERVER_STATE_DIR": str(state_dir),
            "PREPAID_AAA_CONFIG": None,
            "PREPAID_SERVER_PIN_KEY_FILE": None,
        }
        self.runner = _Runner()
        self._db: Database | None = None
        self._store: Store | None = None
        self._calls = itertools.count(1)

    def __call__(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(app, list(args), env=self.env, catch_exceptions=True)
        detail = f"prepaidctl {' '.join(args)}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"unexpected exception: {result.exception!r}\n{detail}")
        assert result.exit_code == code, detail
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--format", "json").stdout)

    def error(self, *args: str, code: int = 1) -> str:
        """Run a command that must fail with one ``error:`` line on stderr."""
        result = self(*args, code=code)
        err = result.stderr.strip()
        assert err.startswith("error: "), err
        assert "\n" not in err, err
        assert "Traceback" not in result.output
        return err

    @property
    def pin_key(self) -> bytes:
        return bytes.fromhex((self.state_dir / "pin.key").read_text().strip())

    def scalar(self, sql: str, **params: object) -> Any:
        with self.db.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def execute(self, sql: str, **params: object) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(text(sql), params)

    # ------------------------------------------------------------------ the billing path
    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database.from_url(self.url, pool_size=2)
        return self._db

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(
                self.db,
                pin_key=self.pin_key,
                limits=Limits(),
                security=SecurityPolicy(card_failure_limit=5),
                sessions=SessionPolicy(),
            )
        return self._store

    def nas_id(self, name: str) -> int:
        return int(self.scalar("SELECT id FROM nas_clients WHERE name = :n", n=name))

    def authorize(
        self,
        nas_id: int,
        now: datetime,
        *,
        pin: str = "",
        calling: str = "",
        called: str = UK,
        password: str | None = None,
    ) -> Any:
        return self.store.authorize(AuthRequest(nas_id, pin, password, calling, called), now)

    def stop(self, nas_id: int, token: str, at: datetime, seconds: int) -> Any:
        return self.store.account(
            AcctEvent(
                nas_id,
                AcctStatus.STOP,
                at,
                token=token,
                acct_session_id=f"s{next(self._calls)}-{uuid.uuid4().hex[:6]}",
                session_seconds=seconds,
            ),
            at,
        )

    def call(
        self,
        nas_id: int,
        now: datetime,
        seconds: int,
        *,
        pin: str = "",
        calling: str = "",
        called: str = UK,
    ) -> Decimal:
        """A whole call through the real billing path: authorize, then Stop. Returns its cost."""
        granted = self.authorize(nas_id, now, pin=pin, calling=calling, called=called)
        assert isinstance(granted, Accepted), granted
        result = self.stop(nas_id, granted.token, now + timedelta(seconds=seconds), seconds)
        assert result.outcome == "billed", result
        assert result.cost is not None
        return result.cost

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


# ---------------------------------------------------------------------------------- helpers
def now_utc() -> datetime:
    return utc_from_epoch(time.time())


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def make_group(ctl: Ctl, tmp_path: Path, currency: str = "USD") -> str:
    group = unique("g")
    ctl("rategroup", "add", group, "--currency", currency)
    sheet = tmp_path / f"{group}.csv"
    sheet.write_text(RATES)
    ctl("rates", "import", group, str(sheet))
    return group


def make_nas(ctl: Ctl) -> int:
    name = unique("gw")
    octets = uuid.uuid4().bytes[:2]
    ctl("nas", "add", name, "--address", f"10.{octets[0]}.{octets[1]}.0/24", "--secret", "s")
    return ctl.nas_id(name)


def make_batch(
    ctl: Ctl,
    tmp_path: Path,
    *extra: str,
    count: int = 3,
    card_type: str = "standard",
    value: str = "5",
    group: str | None = None,
    activate: bool = True,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A batch (activated unless told) and its export rows (serial, pin, ...)."""
    group = group or make_group(ctl, tmp_path)
    out = tmp_path / f"{unique('batch')}.csv"
    data = ctl.json(
        "batch",
        "create",
        "--rate-group",
        group,
        "--type",
        card_type,
        "--value",
        value,
        "--count",
        str(count),
        *extra,
        "--output",
        str(out),
    )
    if activate:
        ctl("card", "activate", "--batch", str(data["id"]))
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return data, rows


def money(text_value: str) -> Decimal:
    return Decimal(text_value)
