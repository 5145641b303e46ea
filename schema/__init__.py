"""Alembic migrations of the Prepaid AAA database, run on SQLite and PostgreSQL.

``prepaidctl db upgrade`` applies them; :func:`upgrade` is the same from Python. Alembic is
imported only when migrating, so every other command starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

LOCATION = Path(__file__).resolve().parent

#: The newest revision in ``versions/``; a test checks it against Alembic's own view.
HEAD = "0007"


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(LOCATION))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def current_head() -> str | None:
    """The head revision as Alembic computes it from the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
