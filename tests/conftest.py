"""Shared fixtures: fresh PostgreSQL databases, Redis namespaces, and whole deployments.

PostgreSQL and Redis are real servers (``PREPAID_TEST_POSTGRES_URL``, default the local trust
server; ``PREPAID_TEST_REDIS_URL``, default the local Redis). When one is unreachable its tests
skip — unless ``PREPAID_TEST_REQUIRE_SERVICES=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import Deployment

REQUIRE_SERVICES = os.environ.get("PREPAID_TEST_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "PREPAID_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PREPAID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_missing(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (PREPAID_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database, dropped after the test."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"paaa_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "not reachable"
        admin.dispose()
        service_missing("PostgreSQL", exc)
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    return REDIS_URL


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for a fresh deployment on each backend the product supports."""
    env = {"PREPAID_SERVER_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    if request.param == "postgres+redis":
        env["PREPAID_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["PREPAID_REDIS_URL"] = request.getfixturevalue("redis_url")
        env["PREPAID_REDIS_PREFIX"] = f"paaa-test-{uuid.uuid4().hex[:8]}:"
    return env


@pytest.fixture(scope="module")
def deployment(
    backend: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A migrated, empty database shared by one test module; its servers stopped after."""
    dep = Deployment(tmp_path_factory.mktemp("deployment"), backend)
    dep.ctl("db", "upgrade")
    try:
        yield dep
    finally:
        dep.stop_all()
