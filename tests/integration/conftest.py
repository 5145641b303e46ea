"""Fixtures of the ``prepaidctl`` integration tests, module-scoped so that every test module gets
its own databases: ``cli_backend`` (SQLite, and PostgreSQL when reachable), ``make_ctl`` (fresh,
migrated databases on demand) and ``ctl`` (one of them). A module may override any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cli_support import BACKENDS, Backend, Ctl


@pytest.fixture(scope="module", params=BACKENDS)
def cli_backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path_factory.mktemp(f"cli-{request.param}"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
def make_ctl(
    cli_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], Ctl]]:
    made: list[Ctl] = []

    def make() -> Ctl:
        ctl = Ctl(cli_backend.new_database(), tmp_path_factory.mktemp("state"))
        ctl("db", "upgrade")
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        ctl.close()


@pytest.fixture(scope="module")
def ctl(make_ctl: Callable[[], Ctl]) -> Ctl:
    return make_ctl()
