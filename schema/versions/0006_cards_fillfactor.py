"""cards leave room on their pages

A card's row changes at its first call (``first_used_at``) and at every Stop (``balance``).
PostgreSQL can write such a change as a heap-only tuple, on the same page and without a new
entry in any of the card's five indexes, only when the page has room for the new version.
Cards are written once, densely, by ``batch create``: at the default fill factor (100) every
page is full, so the first change of each card was a full update, five index entries more,
each on a random index page. With a million cards that is nearly every call's Start.

A fill factor of 85 leaves about 15 % of each page free for those versions; PostgreSQL prunes
the old ones as it visits the page. Only pages written from now on are affected: an existing
large table gets the room when an operator rewrites it (``VACUUM FULL cards`` or
``pg_repack``, in a quiet hour). SQLite has no such setting; nothing changes there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FILLFACTOR = 85


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE cards SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE cards RESET (fillfactor)")
