"""open-call indexes that the open-calls lookup cannot mistake for its own

An authorization reads its card's open calls by ``card_id`` among the open ones, with a
prepared statement whose generic plan is made once per connection. Three partial indexes held
the open calls with the same predicate, so the planner could also read the lookup from the
NAS's or the reaper's index, all of it, filtering by card. With statistics taken while few calls
were open (a quiet hour), their scans look as cheap as the card's index, and the planner chose
one. As the calls of a busy hour came in, each authorization then read every open call: with
20,000 open calls, about 3 ms per card, until autovacuum analyzed the table again (after a
tenth of its rows changed, which for a table of retained calls may take many minutes).

Each of those two indexes now also requires its own column to be set (``nas_id IS NOT NULL``,
``deadline_at IS NOT NULL``), which every query that uses it implies (``nas_id = ...``,
``deadline_at <= ...``) and the open-calls lookup does not (it tests the deadline in its
aggregate, not in ``WHERE``): the card's index is the only one it can use. ``deadline_at`` is
never NULL, so that index holds the same rows as before. SQLite has whole indexes and its own
planner: nothing changes there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OPEN = "state IN ('authorized', 'started')"
INDEXES = {
    "ix_live_sessions_nas_id_state": (["nas_id", "state"], "nas_id"),
    "ix_live_sessions_state_deadline_at": (["state", "deadline_at"], "deadline_at"),
}


def _recreate(with_column_set: bool) -> None:
    for name, (columns, column) in INDEXES.items():
        where = f"{OPEN} AND {column} IS NOT NULL" if with_column_set else OPEN
        op.drop_index(name, table_name="live_sessions")
        op.execute(f"CREATE INDEX {name} ON live_sessions ({', '.join(columns)}) WHERE {where}")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(with_column_set=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate(with_column_set=False)
