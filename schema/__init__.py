"""Alembic migrations of the Prepaid AAA database, run on SQLite and PostgreSQL.

``prepaidctl db upgrade`` applies them; :func:`upgrade` is the same from Python.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

LOCATION = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATION))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def current_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
