"""What the dashboard reads from PostgreSQL beyond the queue module's own functions.

Read-only: every change the dashboard makes goes through ``queue.retry_failed`` and
``queue.discard_failed``. Payload values are never read, only the names of the fields a
change set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from syncqueue_tasks.db import get_engine
from syncqueue_tasks.errors import sanitize_error

# Items of each model that are waiting, in flight or dead, and the oldest waiting one. Each
# status is read on its partial index, so the cost follows the backlog, never the COMPLETED
# history (counting a million COMPLETED rows by model took 0.5 s; this runs every few seconds).
ITEMS_BY_MODEL = text("""
    SELECT model,
           count(*) FILTER (WHERE status = 'PENDING') AS pending,
           count(*) FILTER (WHERE status = 'PROCESSING') AS processing,
           count(*) FILTER (WHERE status = 'FAILED') AS failed,
           min(created_at) FILTER (WHERE status = 'PENDING') AS oldest_pending_at
    FROM (
        SELECT model, status, created_at FROM sync_queue WHERE status = 'PENDING'
        UNION ALL SELECT model, status, created_at FROM sync_queue WHERE status = 'PROCESSING'
        UNION ALL SELECT model, status, created_at FROM sync_queue WHERE status = 'FAILED'
    ) AS live
    GROUP BY model
    ORDER BY model
""")

# Items written in the last hour (a range of ix_sync_queue_completed), and the records waiting
# out a backoff: a PENDING change sent back with a delay that has not passed (the test the
# claim uses to skip a record; ix_sync_queue_backoff).
ACTIVITY = text("""
    SELECT (SELECT count(*) FROM sync_queue
             WHERE status = 'COMPLETED' AND processed_at > now() - interval '1 hour')
             AS completed_last_hour,
           count(DISTINCT (model, record_id)) AS records_in_backoff,
           min(available_at) AS next_retry_at
    FROM sync_queue
    WHERE status = 'PENDING' AND available_at > created_at AND available_at > now()
""")

# The FAILED items an operator picked (ids and/or model; NULL = any), oldest first, with how
# many match in all (a window count, computed before the LIMIT). ix_sync_queue_failed.
FAILED_CHOICE = text("""
    SELECT id, action, model, record_id, count(*) OVER () AS total
    FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    ORDER BY id
    LIMIT :limit
""")

# Every change of one record in the order it was stored (ids are time-ordered), with the
# names of the fields each one set (not their values). ix_sync_queue_record.
RECORD_HISTORY = text("""
    SELECT id, action, status, retries, max_retries, last_error, created_at, claimed_at,
           processed_at, count(*) OVER () AS total,
           ARRAY(SELECT jsonb_object_keys(payload) ORDER BY 1) AS fields
    FROM sync_queue
    WHERE model = :model AND record_id = :record_id
    ORDER BY id
    LIMIT :limit
""")


@dataclass(frozen=True)
class ModelCounts:
    """Items of one model that are PENDING, PROCESSING or FAILED; its oldest PENDING one."""

    model: str
    pending: int
    processing: int
    failed: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True)
class Activity:
    """Items written in the last hour; records waiting out a backoff, and the next retry."""

    completed_last_hour: int
    records_in_backoff: int
    next_retry_at: datetime | None


@dataclass(frozen=True)
class ChosenItem:
    """A FAILED item picked for a retry or discard."""

    id: str
    action: str
    model: str
    record_id: str


@dataclass(frozen=True)
class Choice:
    """The FAILED items picked (at most the limit asked for) and how many matched in all."""

    items: list[ChosenItem]
    total: int


@dataclass(frozen=True)
class Change:
    """One change of a record, as the record page shows it."""

    id: str
    action: str
    status: str
    retries: int
    max_retries: int
    last_error: str | None
    created_at: datetime
    claimed_at: datetime | None
    processed_at: datetime | None
    fields: list[str]


@dataclass(frozen=True)
class History:
    """A record's changes, oldest first (at most the limit asked for), and how many exist."""

    changes: list[Change]
    total: int


def items_by_model() -> list[ModelCounts]:
    """Per model: PENDING, PROCESSING and FAILED items, and when its oldest PENDING one was
    stored (models with none of these are left out)."""
    with get_engine().connect() as conn:
        return [ModelCounts(**row) for row in conn.execute(ITEMS_BY_MODEL).mappings()]


def activity() -> Activity:
    """Items written in the last hour, and the records waiting out a backoff."""
    with get_engine().connect() as conn:
        return Activity(**conn.execute(ACTIVITY).mappings().one())


def choose_failed(ids: list[str] | None, model: str | None, limit: int) -> Choice:
    """The FAILED items among ``ids`` and/or of ``model`` (None: any), oldest first."""
    params = {"ids": ids, "model": model, "limit": limit}
    with get_engine().connect() as conn:
        rows = conn.execute(FAILED_CHOICE, params).mappings().all()
    return Choice(
        items=[ChosenItem(r["id"], r["action"], r["model"], r["record_id"]) for r in rows],
        total=rows[0]["total"] if rows else 0,
    )


def record_history(model: str, record_id: str, limit: int) -> History:
    """The changes of one record, oldest first, errors sanitized again for display."""
    params = {"model": model, "record_id": record_id, "limit": limit}
    with get_engine().connect() as conn:
        rows = conn.execute(RECORD_HISTORY, params).mappings().all()
    changes = [_change(row) for row in rows]
    return History(changes=changes, total=rows[0]["total"] if rows else 0)


def _change(row: Any) -> Change:
    values = {k: row[k] for k in Change.__dataclass_fields__}
    values["last_error"] = sanitize_error(row["last_error"]) if row["last_error"] else None
    values["fields"] = list(row["fields"])
    return Change(**values)
