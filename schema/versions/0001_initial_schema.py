"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nas_clients",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("profile", sa.String(length=16), nullable=False),
        sa.Column("require_message_authenticator", sa.String(length=8), nullable=False),
        sa.Column("message_authenticator_seen", sa.Boolean(), nullable=False),
        sa.Column("boot_epoch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nas_clients")),
        sa.UniqueConstraint("name", name=op.f("uq_nas_clients_name")),
    )
    op.create_table(
        "rate_groups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_groups")),
        sa.UniqueConstraint("name", name=op.f("uq_rate_groups_name")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("card_type", sa.String(length=16), nullable=False),
        sa.Column("face_value", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "rate_group_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("validity_days", sa.Integer(), nullable=True),
        sa.Column("grace_days", sa.Integer(), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("max_calls", sa.Integer(), nullable=False),
        sa.Column("pin_length", sa.Integer(), nullable=False),
        sa.Column("pin_prefix", sa.String(length=16), nullable=False),
        sa.Column("activation_mode", sa.String(length=16), nullable=False),
        sa.Column("card_count", sa.Integer(), nullable=False),
        sa.Column("first_serial", sa.BigInteger(), nullable=False),
        sa.Column("last_serial", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rate_group_id"], ["rate_groups.id"], name=op.f("fk_batches_rate_group_id_rate_groups")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_table(
        "rates",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "rate_group_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("description", sa.String(length=128), nullable=False),
        sa.Column("price_per_minute", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("connection_fee", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("first_increment", sa.Integer(), nullable=False),
        sa.Column("next_increment", sa.Integer(), nullable=False),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rate_group_id"],
            ["rate_groups.id"],
            name=op.f("fk_rates_rate_group_id_rate_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rates")),
        sa.UniqueConstraint("rate_group_id", "prefix", name=op.f("uq_rates_rate_group_id_prefix")),
    )
    op.create_table(
        "cards",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("pin_hash", sa.String(length=64), nullable=False),
        sa.Column("card_type", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("lock_reason", sa.String(length=64), nullable=True),
        sa.Column("balance", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "rate_group_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("max_calls", sa.Integer(), nullable=False),
        sa.Column("activation_mode", sa.String(length=16), nullable=False),
        sa.Column("validity_days", sa.Integer(), nullable=True),
        sa.Column("grace_days", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("activated_at", sa.DateTime(), nullable=True),
        sa.Column("first_used_at", sa.DateTime(), nullable=True),
        sa.Column("failed_pin_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_cards_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["rate_group_id"], ["rate_groups.id"], name=op.f("fk_cards_rate_group_id_rate_groups")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cards")),
        sa.UniqueConstraint("pin_hash", name=op.f("uq_cards_pin_hash")),
        sa.UniqueConstraint("serial", name=op.f("uq_cards_serial")),
    )
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index("ix_cards_batch_id_state", ["batch_id", "state"], unique=False)
        batch_op.create_index("ix_cards_state_expires_at", ["state", "expires_at"], unique=False)

    op.create_table(
        "bind_numbers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("card_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ani", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"],
            ["cards.id"],
            name=op.f("fk_bind_numbers_card_id_cards"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bind_numbers")),
        sa.UniqueConstraint("ani", name=op.f("uq_bind_numbers_ani")),
    )
    with op.batch_alter_table("bind_numbers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bind_numbers_card_id"), ["card_id"], unique=False)

    op.create_table(
        "cdrs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("call_key", sa.String(length=64), nullable=False),
        sa.Column("session_key", sa.String(length=64), nullable=True),
        sa.Column("card_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("nas_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("acct_session_id", sa.String(length=128), nullable=True),
        sa.Column("conf_id", sa.String(length=128), nullable=True),
        sa.Column("leg", sa.String(length=16), nullable=False),
        sa.Column("auth_method", sa.String(length=8), nullable=False),
        sa.Column("calling_number", sa.String(length=32), nullable=False),
        sa.Column("called_number", sa.String(length=32), nullable=False),
        sa.Column("rate_prefix", sa.String(length=32), nullable=False),
        sa.Column("price_per_minute", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("connection_fee", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("billed_seconds", sa.Integer(), nullable=False),
        sa.Column("granted_seconds", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("balance_after", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("over_grant", sa.Boolean(), nullable=False),
        sa.Column("close_reason", sa.String(length=32), nullable=False),
        sa.Column("terminate_cause", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["card_id"], ["cards.id"], name=op.f("fk_cdrs_card_id_cards")),
        sa.ForeignKeyConstraint(
            ["nas_id"],
            ["nas_clients.id"],
            name=op.f("fk_cdrs_nas_id_nas_clients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cdrs")),
        sa.UniqueConstraint("call_key", name=op.f("uq_cdrs_call_key")),
        sa.UniqueConstraint("session_key", name=op.f("uq_cdrs_session_key")),
    )
    with op.batch_alter_table("cdrs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cdrs_calling_number_started_at", ["calling_number", "started_at"], unique=False
        )
        batch_op.create_index("ix_cdrs_card_id_started_at", ["card_id", "started_at"], unique=False)
        batch_op.create_index("ix_cdrs_stopped_at", ["stopped_at"], unique=False)

    op.create_table(
        "live_sessions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("session_key", sa.String(length=64), nullable=True),
        sa.Column("card_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("nas_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("auth_method", sa.String(length=8), nullable=False),
        sa.Column("acct_session_id", sa.String(length=128), nullable=True),
        sa.Column("conf_id", sa.String(length=128), nullable=True),
        sa.Column("calling_number", sa.String(length=32), nullable=False),
        sa.Column("called_number", sa.String(length=32), nullable=False),
        sa.Column("rate_prefix", sa.String(length=32), nullable=False),
        sa.Column("price_per_minute", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("connection_fee", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("first_increment", sa.Integer(), nullable=False),
        sa.Column("next_increment", sa.Integer(), nullable=False),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.Column("granted_seconds", sa.Integer(), nullable=False),
        sa.Column("reserved_amount", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("session_seconds", sa.Integer(), nullable=False),
        sa.Column("authorized_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("last_update_at", sa.DateTime(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_live_sessions_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["nas_id"],
            ["nas_clients.id"],
            name=op.f("fk_live_sessions_nas_id_nas_clients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_sessions")),
        sa.UniqueConstraint("session_key", name=op.f("uq_live_sessions_session_key")),
        sa.UniqueConstraint("token", name=op.f("uq_live_sessions_token")),
    )
    with op.batch_alter_table("live_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_live_sessions_card_id_state", ["card_id", "state"], unique=False)
        batch_op.create_index("ix_live_sessions_nas_id_state", ["nas_id", "state"], unique=False)
        batch_op.create_index(
            "ix_live_sessions_state_deadline_at", ["state", "deadline_at"], unique=False
        )

    op.create_table(
        "security_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("nas_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("calling_number", sa.String(length=32), nullable=False),
        sa.Column("card_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_security_events_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["nas_id"],
            ["nas_clients.id"],
            name=op.f("fk_security_events_nas_id_nas_clients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.create_index("ix_security_events_created_at", ["created_at"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("card_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("balance_after", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("cdr_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_ledger_entries_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["cdr_id"], ["cdrs.id"], name=op.f("fk_ledger_entries_cdr_id_cdrs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entries_card_id_id", ["card_id", "id"], unique=False)
        batch_op.create_index(
            "ix_ledger_entries_kind_created_at", ["kind", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_kind_created_at")
        batch_op.drop_index("ix_ledger_entries_card_id_id")

    op.drop_table("ledger_entries")
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.drop_index("ix_security_events_created_at")

    op.drop_table("security_events")
    with op.batch_alter_table("live_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_live_sessions_state_deadline_at")
        batch_op.drop_index("ix_live_sessions_nas_id_state")
        batch_op.drop_index("ix_live_sessions_card_id_state")

    op.drop_table("live_sessions")
    with op.batch_alter_table("cdrs", schema=None) as batch_op:
        batch_op.drop_index("ix_cdrs_stopped_at")
        batch_op.drop_index("ix_cdrs_card_id_started_at")
        batch_op.drop_index("ix_cdrs_calling_number_started_at")

    op.drop_table("cdrs")
    with op.batch_alter_table("bind_numbers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bind_numbers_card_id"))

    op.drop_table("bind_numbers")
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.drop_index("ix_cards_state_expires_at")
        batch_op.drop_index("ix_cards_batch_id_state")

    op.drop_table("cards")
    op.drop_table("rates")
    op.drop_table("batches")
    op.drop_table("rate_groups")
    op.drop_table("nas_clients")
