"""The migrations go down and up again on both databases, and on PostgreSQL the live-session
indexes are the ones revision 0004 describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

import schema


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'm.sqlite3'}"


def live_session_indexes(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                query = (
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'live_sessions'"
                )
            else:
                query = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'live_sessions'"
            return {name: sql or "" for name, sql in conn.execute(text(query))}
    finally:
        engine.dispose()


def test_down_to_0003_and_up_again(url: str) -> None:
    schema.upgrade(url)
    at_head = live_session_indexes(url)
    command.downgrade(schema.alembic_config(url), "0003")
    assert "ix_live_sessions_closed_at" not in live_session_indexes(url)
    schema.upgrade(url)
    assert live_session_indexes(url) == at_head


def test_open_call_indexes_hold_open_calls_only_on_postgresql(postgres_url: str) -> None:
    schema.upgrade(postgres_url)
    indexes = live_session_indexes(postgres_url)
    for name in (
        "ix_live_sessions_card_id_state",
        "ix_live_sessions_nas_id_state",
        "ix_live_sessions_state_deadline_at",
    ):
        assert "WHERE" in indexes[name] and "'authorized'" in indexes[name], name
        assert "'closed'" not in indexes[name], name
    purge = indexes["ix_live_sessions_closed_at"]
    assert "(closed_at)" in purge and "'closed'" in purge and "'released'" in purge


def cards_reloptions(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT reloptions FROM pg_class WHERE relname = 'cards'"
            return list(conn.execute(text(query)).scalar() or [])
    finally:
        engine.dispose()


def test_cards_leave_room_for_updates_on_postgresql(postgres_url: str) -> None:
    # Revision 0006: a changed card's new version fits on its page (a heap-only update).
    schema.upgrade(postgres_url)
    assert cards_reloptions(postgres_url) == ["fillfactor=85"]
    command.downgrade(schema.alembic_config(postgres_url), "0005")
    assert cards_reloptions(postgres_url) == []
    schema.upgrade(postgres_url)
    assert cards_reloptions(postgres_url) == ["fillfactor=85"]
