"""What the dashboard reads from PostgreSQL beyond the queue module's own functions.

Read-only: every change the dashboard makes goes through ``queue.retry_failed`` and
``queue.discard_failed``. Payload values are never read, only the names of the fields a
change set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.store.queue import RecordChange


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
        return [ModelCounts(**row) for row in conn.execute(sql.ITEMS_BY_MODEL).mappings()]


def activity() -> Activity:
    """Items written in the last hour, and the records waiting out a backoff."""
    with get_engine().connect() as conn:
        return Activity(**conn.execute(sql.ACTIVITY).mappings().one())


def choose_failed(ids: list[str] | None, model: str | None, limit: int) -> Choice:
    """The FAILED items among ``ids`` and/or of ``model`` (None: any), oldest first."""
    params = {"ids": ids, "model": model, "limit": limit}
    with get_engine().connect() as conn:
        rows = conn.execute(sql.FAILED_CHOICE, params).mappings().all()
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
