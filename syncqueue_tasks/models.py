"""The ``sync_queue`` table, its state enums, and ``QueueItem``, the typed view of a claim."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Enum, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class SyncAction(enum.StrEnum):
    """What happened to the record."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class QueueStatus(enum.StrEnum):
    """PENDING -> PROCESSING -> COMPLETED; PROCESSING -> PENDING (backoff) or FAILED."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class Base(DeclarativeBase):
    """Declarative base of the package's tables."""


def _pg_enum(enum_cls: type[enum.StrEnum], name: str) -> Enum:
    return Enum(enum_cls, name=name, values_callable=lambda e: [m.value for m in e])


class SyncQueue(Base):
    """One change waiting to be (or already) written to the spreadsheet."""

    __tablename__ = "sync_queue"

    # COLLATE "C": ids are compared and sorted bytewise (cheaper; ULIDs sort by time that way).
    id: Mapped[str] = mapped_column(String(26, collation="C"), primary_key=True)
    # Order of a record's changes: the id (enqueue order), or, for changes replayed after a
    # late-arriving or retried earlier change, "<its position>.000001", ... (queue._replay).
    position: Mapped[str] = mapped_column(String(255, collation="C"))
    # The change this row applies: its own id, or for a copy that re-applies a change after a
    # late-arriving earlier one, the original's. Orders a record's changes by enqueue time.
    origin_id: Mapped[str] = mapped_column(String(26, collation="C"))
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
    # Earliest moment the item may be claimed (backoff after a retryable failure).
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # When the current claim was taken: stuck detection measures time in PROCESSING.
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Proof of ownership of the current claim; every exit from PROCESSING compares it.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # Claim: walk PENDING rows in position (= enqueue) order. Partial, so its size is the
        # backlog, not the history: claim cost stays flat as COMPLETED rows pile up.
        Index("ix_sync_queue_pending", "position", postgresql_where=text("status = 'PENDING'")),
        # Per-record order: the oldest PENDING change of a record, and the changes after it.
        Index(
            "ix_sync_queue_record_pending",
            "model",
            "record_id",
            "position",
            postgresql_where=text("status = 'PENDING'"),
        ),
        # Late arrivals: "was a later change of this record already claimed or written?"
        # (every status, so not partial; usually an empty range at the end of the record).
        Index("ix_sync_queue_record", "model", "record_id", "origin_id"),
        # Per-record order: "is a change of this record in flight?"; and reset_stuck. Holds only
        # the claimed rows (workers x batch size), so any scan of it is cheap.
        Index(
            "ix_sync_queue_processing",
            "model",
            "record_id",
            postgresql_where=text("status = 'PROCESSING'"),
        ),
        # Claim: "which records wait out a backoff?" Only PENDING rows sent back with a delay
        # (a failed attempt, Retry-After) have available_at after created_at; usually few.
        Index(
            "ix_sync_queue_backoff",
            "available_at",
            postgresql_where=text("status = 'PENDING' AND available_at > created_at"),
        ),
        # cleanup_completed and "completed in the last hour".
        Index(
            "ix_sync_queue_completed",
            "processed_at",
            postgresql_where=text("status = 'COMPLETED'"),
        ),
        # Operators: list / retry / discard dead letters, by model.
        Index("ix_sync_queue_failed", "model", "id", postgresql_where=text("status = 'FAILED'")),
    )


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A claimed change, as handed out by ``dequeue``. ``claim_token`` proves ownership."""

    id: str
    action: SyncAction
    model: str
    record_id: str
    sheet_row_index: int | None
    payload: dict[str, Any]
    retries: int
    max_retries: int
    created_at: datetime
    claim_token: uuid.UUID
