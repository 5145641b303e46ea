"""report day statistics

Revenue by day groups calls by ``CAST(stopped_at AS DATE)`` (and recharges and breakage by
``CAST(created_at AS DATE)``). PostgreSQL keeps no statistics on such an expression and so
estimates as many groups as there are distinct timestamps, a million for a million calls: it
then plans the aggregation in one process with spill partitions instead of in parallel workers,
and the report takes twice as long. Expression statistics tell it there are a few hundred days.

They are a planner hint only: no data, no constraint, nothing to maintain on writes (ANALYZE,
and so autovacuum, keeps them current). SQLite has no such thing and needs none (its day
grouping is ``date(stopped_at)`` on one core anyway): there this revision changes nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATISTICS = {
    "st_cdrs_stopped_day": ("cdrs", "CAST(stopped_at AS DATE)"),
    "st_ledger_entries_created_day": ("ledger_entries", "CAST(created_at AS DATE)"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, expression) in STATISTICS.items():
        op.execute(f"CREATE STATISTICS {name} ON ({expression}) FROM {table}")
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in STATISTICS:
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
