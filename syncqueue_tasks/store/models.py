"""The ``sync_queue`` and ``sync_record`` tables (the ORM side, for Alembic and tests).

Their enums and ``QueueItem`` live in ``core.items``; they are re-exported here, where the
former ``syncqueue_tasks.models`` path finds them.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Enum, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from syncqueue_tasks.core.items import QueueItem, QueueStatus, SyncAction

__all__ = ["Base", "QueueItem", "QueueStatus", "SyncAction", "SyncQueue", "SyncRecord"]


class Base(DeclarativeBase):
    """Declarative base of the package's tables."""


def _pg_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(enum_cls, name=name, values_callable=lambda e: [m.value for m in e])


class SyncQueue(Base):
    """One change waiting to be (or already) written to the spreadsheet."""

    __tablename__ = "sync_queue"

    # COLLATE "C": ids are compared and sorted bytewise (cheaper; ULIDs sort by time that way).
    # The id is the change's version: a record's changes are applied in id order (records.py).
    id: Mapped[str] = mapped_column(String(26, collation="C"), primary_key=True)
    action: Mapped[SyncAction] = mapped_column(_pg_enum(SyncAction, "sync_action"))
    model: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(255))
    sheet_row_index: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[QueueStatus] = mapped_column(
        _pg_enum(QueueStatus, "queue_status"), server_default=QueueStatus.PENDING.value
    )
    retries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_retries: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the current claim was taken, and the claim's token (the record holds the same one).
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # A record's changes by status, in id order: a claim takes a record's PENDING changes
        # (one range, whatever the record's history), outcomes find its claimed ones, and the
        # record's history reads them all.
        Index("ix_sync_queue_record", "model", "record_id", "status", "id"),
        # cleanup_completed and "completed in the last hour".
        Index(
            "ix_sync_queue_completed",
            "processed_at",
            postgresql_where=text("status = 'COMPLETED'"),
        ),
        # Operators: list / retry / discard dead letters, by model.
        Index("ix_sync_queue_failed", "model", "id", postgresql_where=text("status = 'FAILED'")),
    )


class SyncRecord(Base):
    """One record that ever had a change: its claim, its waiting work, its synced state."""

    __tablename__ = "sync_record"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    # How many of its changes are PENDING. Kept by every statement that moves a change in or
    # out of PENDING, by row arithmetic on the locked row, so it never misses a concurrent one.
    pending: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Claimable from: when it last started waiting, or when its backoff ends.
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # The oldest change that made it wait: orders records that became claimable together.
    waiting_id: Mapped[str | None] = mapped_column(String(26, collation="C"))
    # The one claim holding the record (a claim is a row lock taken with SKIP LOCKED, then
    # this token); every outcome compares it.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How many of its changes the claim still holds: the claim ends when it reaches 0.
    in_flight: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # What was last written (records.RecordState): field values, the change id that set each
    # field, and the newest DELETE / CREATE / CREATE-or-UPDATE applied.
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    versions: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    deleted_id: Mapped[str | None] = mapped_column(String(26, collation="C"))
    created_id: Mapped[str | None] = mapped_column(String(26, collation="C"))
    touched_id: Mapped[str | None] = mapped_column(String(26, collation="C"))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("pending >= 0", name="ck_sync_record_pending"),
        CheckConstraint(
            "(claim_token IS NULL) = (claimed_at IS NULL)"
            " AND (claim_token IS NULL) = (in_flight = 0)",
            name="ck_sync_record_claim",
        ),
        # Claims: records with waiting changes, in the order they became claimable. Holds only
        # records with work, so its size is the backlog's records, not its changes.
        Index(
            "ix_sync_record_pending",
            "available_at",
            "waiting_id",
            postgresql_where=text("pending > 0"),
        ),
        # reset_stuck and stats: records held by a claim (workers x batch size of them).
        Index(
            "ix_sync_record_claimed", "claimed_at", postgresql_where=text("claim_token IS NOT NULL")
        ),
    )
