"""What the dashboard reads from PostgreSQL beyond the queue module's own functions.

Read-only: every change the dashboard makes goes through ``queue.retry_failed`` and
``queue.discard_failed``. Payload values are never read, only the names of the fields a
change set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.store.queue import RecordChange

# Per model: waiting changes (sync_record.pending, on ix_sync_record_pending) and when its
# oldest waiting change was stored (each waiting record's oldest change, by primary key);
# changes in flight (claimed records' PROCESSING rows, on ix_sync_record_claimed); dead
# letters (ix_sync_queue_failed). Never the COMPLETED history: this runs every few seconds.
ITEMS_BY_MODEL = text("""
    SELECT model, sum(pending)::integer AS pending, sum(processing)::integer AS processing,
           sum(failed)::integer AS failed, min(stored_at) AS oldest_pending_at
    FROM (
        SELECT r.model, r.pending, 0 AS processing, 0 AS failed, q.created_at AS stored_at
        FROM sync_record AS r LEFT JOIN sync_queue AS q ON q.id = r.waiting_id
        WHERE r.pending > 0
        UNION ALL
        SELECT q.model, 0, 1, 0, NULL
        FROM sync_record AS r
        JOIN sync_queue AS q
          ON q.model = r.model AND q.record_id = r.record_id AND q.status = 'PROCESSING'
        WHERE r.claim_token IS NOT NULL
        UNION ALL
        SELECT model, 0, 0, 1, NULL FROM sync_queue WHERE status = 'FAILED'
    ) AS live
    GROUP BY model
    ORDER BY model
""")

# Items written in the last hour (a range of ix_sync_queue_completed), and the records waiting
# out a backoff: waiting records not claimable before a time still to come
# (ix_sync_record_pending).
ACTIVITY = text("""
    SELECT (SELECT count(*) FROM sync_queue
             WHERE status = 'COMPLETED' AND processed_at > now() - interval '1 hour')
             AS completed_last_hour,
           count(*) AS records_in_backoff,
           min(available_at) AS next_retry_at
    FROM sync_record
    WHERE pending > 0 AND available_at > now()
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


def change_view(change: RecordChange) -> Change:
    """A change as ``queue.get_record`` gives it, for display: the names of the fields it
    set instead of their values, and its error sanitized again."""
    error = change["last_error"]
    return Change(
        id=change["id"],
        action=change["action"],
        status=change["status"],
        retries=change["retries"],
        max_retries=change["max_retries"],
        last_error=sanitize_error(error) if error else None,
        created_at=change["created_at"],
        claimed_at=change["claimed_at"],
        processed_at=change["processed_at"],
        fields=sorted(change["payload"]),
    )
