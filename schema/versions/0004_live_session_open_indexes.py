"""live session indexes on open calls

``live_sessions`` keeps finished calls for ``closed_session_retention_days`` (30 by default), so
late duplicates of a Stop are recognised: millions of rows on a busy server, of which a few
thousand are open calls. On PostgreSQL the three indexes that find open calls (by card, by NAS,
by deadline) now hold open calls only: a few thousand entries instead of millions, and a Stop,
which closes the call, no longer adds an entry to each of them.

The reaper purges finished calls past the retention every 30 s. It found them through
``(state, deadline_at)``, reading every finished call's entry at each run; a new index on
``closed_at`` of finished calls finds just the ones to purge (on SQLite a plain index on
``closed_at``, since SQLite cannot use a partial index for the server's parameterized queries).

Indexes are built without ``CONCURRENTLY``: the server refuses to start on an older schema, so
the upgrade runs with the servers stopped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OPEN = "state IN ('authorized', 'started')"
FINISHED = "state IN ('closed', 'released')"
OPEN_INDEXES = {
    "ix_live_sessions_card_id_state": ["card_id", "state"],
    "ix_live_sessions_nas_id_state": ["nas_id", "state"],
    "ix_live_sessions_state_deadline_at": ["state", "deadline_at"],
}


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        for name, columns in OPEN_INDEXES.items():
            op.drop_index(name, table_name="live_sessions")
            op.execute(f"CREATE INDEX {name} ON live_sessions ({', '.join(columns)}) WHERE {OPEN}")
        op.execute(
            f"CREATE INDEX ix_live_sessions_closed_at ON live_sessions (closed_at) WHERE {FINISHED}"
        )
    else:
        op.create_index("ix_live_sessions_closed_at", "live_sessions", ["closed_at"])


def downgrade() -> None:
    op.drop_index("ix_live_sessions_closed_at", table_name="live_sessions")
    if op.get_bind().dialect.name == "postgresql":
        for name, columns in OPEN_INDEXES.items():
            op.drop_index(name, table_name="live_sessions")
            op.create_index(name, "live_sessions", columns)
