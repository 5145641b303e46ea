"""report indexes

Calls longer than their grant, for the suspicious-usage report: ``cdrs(over_grant, stopped_at)``
finds the few flagged calls in a period among millions without scanning the table. The same
plain B-tree index on SQLite and PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cdrs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cdrs_over_grant_stopped_at", ["over_grant", "stopped_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("cdrs", schema=None) as batch_op:
        batch_op.drop_index("ix_cdrs_over_grant_stopped_at")
