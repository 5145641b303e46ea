"""The relational schema, as SQLAlchemy 2.x declarative tables.

Migrations in ``schema/versions`` create exactly this; a test compares the two on SQLite and
PostgreSQL. Money columns are NUMERIC(18, 6) (more places than any currency needs, so a change of
precision never loses stored digits); times are UTC, stored as naive UTC datetimes because SQLite
has no time zones.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

Money = Annotated[Decimal, mapped_column(Numeric(18, 6, asdecimal=True))]
UtcTime = Annotated[datetime, mapped_column(DateTime(timezone=False))]
IdFk = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class NasClient(Base):
    __tablename__ = "nas_clients"

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(64))  # address or CIDR
    secret: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(16), default="generic")
    require_message_authenticator: Mapped[str] = mapped_column(String(8), default="auto")
    message_authenticator_seen: Mapped[bool] = mapped_column(Boolean, default=False)
    boot_epoch: Mapped[int] = mapped_column(Integer, default=0)  # bumped by Accounting-On/Off
    created_at: Mapped[UtcTime]


class RateGroup(Base):
    __tablename__ = "rate_groups"

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[UtcTime]
    # Changed (by a trigger, revision 0005) with every change to the group's rates: the server's
    # cache of the group's rates is good while the version is the one it loaded.
    rates_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class RateRow(Base):
    __tablename__ = "rates"
    __table_args__ = (UniqueConstraint("rate_group_id", "prefix"),)

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    rate_group_id: Mapped[int] = mapped_column(ForeignKey("rate_groups.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(128), default="")
    price_per_minute: Mapped[Money]
    connection_fee: Mapped[Money]
    first_increment: Mapped[int] = mapped_column(Integer)
    next_increment: Mapped[int] = mapped_column(Integer)
    grace_seconds: Mapped[int] = mapped_column(Integer)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    card_type: Mapped[str] = mapped_column(String(16))
    face_value: Mapped[Money]
    currency: Mapped[str] = mapped_column(String(3))
    rate_group_id: Mapped[int] = mapped_column(ForeignKey("rate_groups.id"))
    validity_days: Mapped[int | None] = mapped_column(Integer)
    grace_days: Mapped[int] = mapped_column(Integer, default=0)
    expires_on: Mapped[date | None] = mapped_column(Date)
    max_calls: Mapped[int] = mapped_column(Integer, default=1)
    pin_length: Mapped[int] = mapped_column(Integer)
    pin_prefix: Mapped[str] = mapped_column(String(16), default="")
    activation_mode: Mapped[str] = mapped_column(String(16))
    card_count: Mapped[int] = mapped_column(Integer)
    first_serial: Mapped[int] = mapped_column(BigInteger)
    last_serial: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[UtcTime]


class Card(Base):
    __tablename__ = "cards"
    __table_args__ = (
        Index("ix_cards_batch_id_state", "batch_id", "state"),
        Index("ix_cards_state_expires_at", "state", "expires_at"),
        # Room on each page for a changed card's new version (revision 0006).
        {"postgresql_with": {"fillfactor": 85}},
    )

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger, unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    pin_hash: Mapped[str] = mapped_column(String(64), unique=True)
    card_type: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    lock_reason: Mapped[str | None] = mapped_column(String(64))
    balance: Mapped[Money]
    currency: Mapped[str] = mapped_column(String(3))
    rate_group_id: Mapped[int] = mapped_column(ForeignKey("rate_groups.id"))
    max_calls: Mapped[int] = mapped_column(Integer)
    activation_mode: Mapped[str] = mapped_column(String(16))
    validity_days: Mapped[int | None] = mapped_column(Integer)
    grace_days: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    first_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    failed_pin_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[UtcTime]


class BindNumber(Base):
    __tablename__ = "bind_numbers"

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id", ondelete="CASCADE"), index=True)
    ani: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[UtcTime]


_OPEN = text("state IN ('authorized', 'started')")
#: The NAS's and the reaper's open-call indexes also require their own column to be set, so the
#: open-calls lookup by card, which implies neither, can use only the card's (revision 0007).
_OPEN_WITH_NAS = text("state IN ('authorized', 'started') AND nas_id IS NOT NULL")
_OPEN_WITH_DEADLINE = text("state IN ('authorized', 'started') AND deadline_at IS NOT NULL")
_FINISHED = text("state IN ('closed', 'released')")


class LiveSession(Base):
    """A call from its authorization until it ends (and, closed, for a while after).

    ``token`` is sent in Class; ``session_key`` is the NAS's view of the call
    (hash of NAS, its boot epoch and Acct-Session-Id) and is unique, so two processes can never
    open the same call twice. Closed rows are kept ``closed_session_retention_days`` so late
    duplicates of a Stop are recognised.
    """

    __tablename__ = "live_sessions"
    __table_args__ = (
        # On PostgreSQL the open-call indexes hold open calls only, the purge's finished ones
        # only (revisions 0004 and 0007); SQLite has them whole.
        Index("ix_live_sessions_card_id_state", "card_id", "state", postgresql_where=_OPEN),
        Index("ix_live_sessions_nas_id_state", "nas_id", "state", postgresql_where=_OPEN_WITH_NAS),
        Index(
            "ix_live_sessions_state_deadline_at",
            "state",
            "deadline_at",
            postgresql_where=_OPEN_WITH_DEADLINE,
        ),
        Index("ix_live_sessions_closed_at", "closed_at", postgresql_where=_FINISHED),
    )

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    session_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"))
    nas_id: Mapped[int | None] = mapped_column(ForeignKey("nas_clients.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(16))  # authorized, started, closed, released
    auth_method: Mapped[str] = mapped_column(String(8))  # pin, card, ani
    acct_session_id: Mapped[str | None] = mapped_column(String(128))
    conf_id: Mapped[str | None] = mapped_column(String(128))
    calling_number: Mapped[str] = mapped_column(String(32), default="")
    called_number: Mapped[str] = mapped_column(String(32), default="")
    rate_prefix: Mapped[str] = mapped_column(String(32))
    price_per_minute: Mapped[Money]
    connection_fee: Mapped[Money]
    first_increment: Mapped[int] = mapped_column(Integer)
    next_increment: Mapped[int] = mapped_column(Integer)
    grace_seconds: Mapped[int] = mapped_column(Integer)
    granted_seconds: Mapped[int] = mapped_column(Integer)
    reserved_amount: Mapped[Money]
    session_seconds: Mapped[int] = mapped_column(Integer, default=0)  # largest seen
    authorized_at: Mapped[UtcTime]
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    last_update_at: Mapped[UtcTime]
    deadline_at: Mapped[UtcTime]  # reaped when no news by then
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))


class Cdr(Base):
    __tablename__ = "cdrs"
    __table_args__ = (
        Index("ix_cdrs_card_id_started_at", "card_id", "started_at"),
        Index("ix_cdrs_calling_number_started_at", "calling_number", "started_at"),
        Index("ix_cdrs_stopped_at", "stopped_at"),
        Index("ix_cdrs_over_grant_stopped_at", "over_grant", "stopped_at"),
    )

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    call_key: Mapped[str] = mapped_column(String(64), unique=True)  # exactly once
    session_key: Mapped[str | None] = mapped_column(String(64), unique=True)  # NAS's identity
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"))
    nas_id: Mapped[int | None] = mapped_column(ForeignKey("nas_clients.id", ondelete="SET NULL"))
    acct_session_id: Mapped[str | None] = mapped_column(String(128))
    conf_id: Mapped[str | None] = mapped_column(String(128))
    leg: Mapped[str] = mapped_column(String(16), default="billed")  # billed or other-leg
    auth_method: Mapped[str] = mapped_column(String(8))
    calling_number: Mapped[str] = mapped_column(String(32), default="")
    called_number: Mapped[str] = mapped_column(String(32), default="")
    rate_prefix: Mapped[str] = mapped_column(String(32))
    price_per_minute: Mapped[Money]
    connection_fee: Mapped[Money]
    started_at: Mapped[UtcTime]
    stopped_at: Mapped[UtcTime]
    duration_seconds: Mapped[int] = mapped_column(Integer)
    billed_seconds: Mapped[int] = mapped_column(Integer)
    granted_seconds: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Money]
    balance_after: Mapped[Money]
    over_grant: Mapped[bool] = mapped_column(Boolean, default=False)
    close_reason: Mapped[str] = mapped_column(String(32))  # stop, accounting-on, reaped
    terminate_cause: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[UtcTime]


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_card_id_id", "card_id", "id"),
        Index("ix_ledger_entries_kind_created_at", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("cards.id"))
    # creation, recharge, call, transfer, expiry, adjustment
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Money]  # signed: + credit, - debit
    balance_after: Mapped[Money]
    cdr_id: Mapped[int | None] = mapped_column(ForeignKey("cdrs.id"))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[UtcTime]


class SecurityEvent(Base):
    """A wrong PIN, a lockout or a card locked by attack; read by the suspicious-usage report."""

    __tablename__ = "security_events"
    __table_args__ = (Index("ix_security_events_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(IdFk, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    nas_id: Mapped[int | None] = mapped_column(ForeignKey("nas_clients.id", ondelete="SET NULL"))
    calling_number: Mapped[str] = mapped_column(String(32), default="")
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"))
    created_at: Mapped[UtcTime]
