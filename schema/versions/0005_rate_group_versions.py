"""rate group versions

The server keeps each rate group's rates in memory and looks the longest prefix up there
instead of asking the database at every authorization (with a thousand rates and a batch of
requests, PostgreSQL's lookup cost more than everything else in the authorization). It must
never rate a call at a price that is no longer the group's: ``rate_groups.rates_version``
changes, in the same transaction, with every change to the rates (a trigger, so changes made
by hand in SQL count too), and the authorization reads the version of each card's group with
the card. A version the server has not loaded makes it load the group again.

PostgreSQL bumps every group once per statement that changes rates (groups are few, an import
is one statement per chunk); SQLite, which has only row triggers, bumps the row's group.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BUMP = "UPDATE rate_groups SET rates_version = rates_version + 1 WHERE id ="
SQLITE_TRIGGERS = (
    f"CREATE TRIGGER rates_inserted AFTER INSERT ON rates BEGIN {_BUMP} NEW.rate_group_id; END",
    f"CREATE TRIGGER rates_updated AFTER UPDATE ON rates BEGIN {_BUMP} NEW.rate_group_id; END",
    f"CREATE TRIGGER rates_deleted AFTER DELETE ON rates BEGIN {_BUMP} OLD.rate_group_id; END",
    # An update may move a rate to another group: that group changes too.
    f"CREATE TRIGGER rates_moved AFTER UPDATE OF rate_group_id ON rates "
    f"BEGIN {_BUMP} OLD.rate_group_id; END",
)


def upgrade() -> None:
    op.add_column(
        "rate_groups",
        sa.Column("rates_version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION prepaid_rates_changed() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN UPDATE rate_groups SET rates_version = rates_version + 1; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER rates_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rates "
            "FOR EACH STATEMENT EXECUTE FUNCTION prepaid_rates_changed()"
        )
        return
    for trigger in SQLITE_TRIGGERS:
        op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER rates_changed ON rates")
        op.execute("DROP FUNCTION prepaid_rates_changed()")
    else:
        for name in ("rates_inserted", "rates_updated", "rates_deleted", "rates_moved"):
            op.execute(f"DROP TRIGGER {name}")
    with op.batch_alter_table("rate_groups") as batch:
        batch.drop_column("rates_version")
