"""The shared queue module: every Celery task and the CLI go through these functions.

Ownership: ``dequeue`` hands out ``QueueItem`` objects carrying a claim token. The ``mark_*``
functions take those items (or ``Claim(id, token)`` pairs) and change a row only while it is
still PROCESSING under that token. An item that is unknown or no longer owned (``reset_stuck``
gave it away) is left alone, and the return value says so: ``mark_complete`` returns False,
``mark_complete_many`` counts only the items it changed, ``mark_failed`` returns None.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from syncqueue_tasks import sql
from syncqueue_tasks.db import get_engine
from syncqueue_tasks.errors import ValidationError, sanitize_error
from syncqueue_tasks.ids import new_id
from syncqueue_tasks.models import QueueItem, QueueStatus, SyncAction
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.validation import (
    Change,
    validate_age,
    validate_batch_size,
    validate_change,
    validate_change_mapping,
    validate_item_id,
    validate_limit,
)

log = logging.getLogger(__name__)


class Claim(NamedTuple):
    """An item id plus the claim token ``dequeue`` gave for it."""

    id: str
    claim_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed item for ``mark_failed_many``."""

    item: QueueItem | Claim
    error: BaseException | str
    retryable: bool = True
    retry_after: float | None = None
    count_attempt: bool = True


def enqueue(
    action: SyncAction | str,
    model: str,
    record_id: str | int,
    payload: dict[str, Any],
    *,
    sheet_row_index: int | None = None,
    max_retries: int | None = None,
    session: Session | None = None,
    item_id: str | None = None,
) -> str:
    """Validate and store one change; return its id.

    With ``session`` the row joins the caller's transaction (transactional outbox); without,
    it commits on its own. ``item_id`` lets a caller choose the id up front (then a second
    call with the same id is a no-op): the Celery task uses it to make redelivery harmless.
    """
    change = validate_change(action, model, record_id, payload, sheet_row_index, max_retries)
    item_id = new_id() if item_id is None else validate_item_id(item_id)
    _store([change], [item_id], session)
    return item_id


def enqueue_many(
    changes: Iterable[Any],
    *,
    session: Session | None = None,
    item_ids: Sequence[str] | None = None,
) -> list[str]:
    """Validate all ``changes`` first, then store them in one statement; all or nothing.

    Each change is a mapping (or object) with ``enqueue``'s keys: ``action``, ``model``,
    ``record_id``, ``payload`` and optionally ``sheet_row_index``, ``max_retries``.
    """
    validated = [validate_change_mapping(c) for c in changes]
    if item_ids is None:
        ids = [new_id() for _ in validated]
    else:
        ids = [validate_item_id(i) for i in item_ids]
        if len(ids) != len(validated) or len(set(ids)) != len(ids):
            raise ValidationError("item_ids", "must be unique, one per change")
    if validated:
        _store(validated, ids, session)
    return ids


def dequeue(batch_size: int = 25) -> list[QueueItem]:
    """Claim up to ``batch_size`` PENDING items; return them oldest first.

    Per-record order: a record's oldest PENDING change is claimable once no change of that
    record is PROCESSING or waiting out a backoff; it comes with the record's later
    PENDING changes (in order, within ``batch_size``), so a record is only ever in one claim.
    A caller that gets several changes of one record must not complete a later one while an
    earlier one goes back to PENDING (``batch.process`` retries them together). The claim is
    committed before this returns.
    """
    batch_size = validate_batch_size(batch_size)
    with get_engine().begin() as conn:
        claimed = conn.execute(sql.CLAIM, {"batch_size": batch_size, "token": uuid.uuid4()})
        rows = claimed.all()
        if rows:
            overtaken = conn.execute(sql.RELEASE_OVERTAKEN, {"ids": [r.id for r in rows]})
            released = set(overtaken.scalars())
            rows = sorted((r for r in rows if r.id not in released), key=lambda r: str(r.position))
    return [
        QueueItem(
            id=r.id,
            action=SyncAction(r.action),
            model=r.model,
            record_id=r.record_id,
            sheet_row_index=r.sheet_row_index,
            payload=r.payload,
            retries=r.retries,
            max_retries=r.max_retries,
            created_at=r.created_at,
            claim_token=r.claim_token,
        )
        for r in rows
    ]


def mark_complete(item: QueueItem | Claim) -> bool:
    """PROCESSING -> COMPLETED if the caller still owns the claim; False otherwise."""
    return mark_complete_many([item]) == 1


def mark_complete_many(items: Iterable[QueueItem | Claim]) -> int:
    """Complete every item the caller still owns, in one statement; return how many."""
    claims = [_claim(i) for i in items]
    if not claims:
        return 0
    ids = [c.id for c in claims]
    with get_engine().begin() as conn:
        conn.execute(sql.LOCK_CLAIMED_RECORDS, {"ids": ids})
        result = conn.execute(sql.COMPLETE, {"ids": ids, "tokens": [c.claim_token for c in claims]})
        return len(result.all())


def mark_failed(
    item: QueueItem | Claim,
    error: BaseException | str,
    *,
    retryable: bool = True,
    retry_after: float | None = None,
    count_attempt: bool = True,
) -> QueueStatus | None:
    """Record a failed attempt in one atomic statement; return the new status.

    Increments ``retries``; back to PENDING after a backoff while ``retries < max_retries``,
    else FAILED. ``retryable=False`` goes straight to FAILED. None: not owned (or unknown).
    """
    result = mark_failed_many([Failure(item, error, retryable, retry_after, count_attempt)])
    return next(iter(result.values()), None)


def mark_failed_many(failures: Iterable[Failure]) -> dict[str, QueueStatus]:
    """Record many failures in one statement; return the new status of each owned item."""
    failures = list(failures)
    if not failures:
        return {}
    settings = get_settings()
    claims = [_claim(f.item) for f in failures]
    params = {
        "ids": [c.id for c in claims],
        "tokens": [c.claim_token for c in claims],
        "errors": [sanitize_error(f.error) for f in failures],
        "retryable": [f.retryable for f in failures],
        "retry_after": [
            None if f.retry_after is None else max(0.0, f.retry_after) for f in failures
        ],
        "count_attempt": [f.count_attempt for f in failures],
        "backoff_base": settings.backoff_base_seconds,
        "backoff_max": settings.backoff_max_seconds,
    }
    with get_engine().begin() as conn:
        conn.execute(sql.LOCK_CLAIMED_RECORDS, {"ids": params["ids"]})
        rows = conn.execute(sql.FAIL, params).all()
    return {r.id: QueueStatus(r.status) for r in rows}


def reset_stuck(older_than_minutes: float = 10) -> int:
    """Put items claimed more than ``older_than_minutes`` ago back to PENDING; return how many.

    Choose a threshold longer than ``process_batch``'s hard time limit, or a live worker's
    claim may be taken away (its late ``mark_*`` calls are then ignored, not applied).
    """
    older_than_minutes = validate_age("older_than_minutes", older_than_minutes)
    reason = f"reset_stuck: claim older than {older_than_minutes:g} minutes, returned to PENDING"
    seconds = older_than_minutes * 60
    with get_engine().begin() as conn:
        ids = list(conn.execute(sql.STUCK, {"seconds": seconds}).scalars())
        if not ids:
            return 0
        conn.execute(sql.LOCK_CLAIMED_RECORDS, {"ids": ids})
        params = {"ids": ids, "seconds": seconds, "reason": reason}
        rows = conn.execute(sql.RESET_STUCK, params).all()
    if rows:
        log.warning("reset_stuck returned %d item(s) to PENDING", len(rows))
    return len(rows)


def cleanup_completed(older_than_days: float = 7, *, chunk_size: int | None = None) -> int:
    """Delete COMPLETED items processed more than ``older_than_days`` ago; return how many.

    Works in chunks of ``chunk_size`` rows (default ``SYNCQUEUE_CLEANUP_CHUNK_SIZE``), each in
    its own short transaction. FAILED items are never touched.
    """
    older_than_days = validate_age("older_than_days", older_than_days)
    chunk = get_settings().cleanup_chunk_size if chunk_size is None else chunk_size
    chunk = validate_limit("chunk_size", chunk, 1_000_000)
    total = 0
    while True:
        with get_engine().begin() as conn:
            deleted = conn.execute(
                sql.DELETE_COMPLETED_CHUNK, {"seconds": older_than_days * 86400, "chunk": chunk}
            ).rowcount
        total += deleted
        if deleted < chunk:
            return total


def retry_failed(item_ids: Iterable[str] | None = None, *, model: str | None = None) -> int:
    """FAILED -> PENDING with retries reset, by ids and/or model (None: all); return how many.

    A retried change is applied before the later changes of its record, which are applied
    again after it (they may have been written while it was parked), so the record still
    ends at its last change.
    """
    ids = None if item_ids is None else [validate_item_id(i) for i in item_ids]
    with get_engine().begin() as conn:
        chosen = conn.execute(sql.CHOOSE_FAILED, {"ids": ids, "model": model}).all()
        if not chosen:
            return 0
        records = {"models": [r.model for r in chosen], "record_ids": [r.record_id for r in chosen]}
        conn.execute(sql.LOCK_RECORDS, records)
        retried = conn.execute(sql.RETRY_FAILED, {"ids": [r.id for r in chosen]}).all()
        first: dict[tuple[str, str], Any] = {}
        for row in sorted(retried, key=lambda r: r.origin_id):
            first.setdefault((row.model, row.record_id), row)
        _replay(
            [Anchor(r.model, r.record_id, r.id, r.origin_id, r.position) for r in first.values()],
            conn.execute,
        )
    return len(retried)


def discard_failed(item_ids: Iterable[str] | None = None, *, model: str | None = None) -> int:
    """Delete FAILED items for good, by ids and/or model (None: all); return how many."""
    ids = None if item_ids is None else [validate_item_id(i) for i in item_ids]
    with get_engine().begin() as conn:
        return len(conn.execute(sql.DISCARD_FAILED, {"ids": ids, "model": model}).all())


def list_failed(*, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest FAILED items with their last error, for operators."""
    limit = validate_limit("limit", limit, 100_000)
    with get_engine().connect() as conn:
        rows = conn.execute(sql.LIST_FAILED, {"model": model, "limit": limit}).mappings().all()
    return [dict(r) for r in rows]


def get_queue_stats() -> dict[str, Any]:
    """Counts per status, age of the oldest PENDING item, recent failures and completions."""
    with get_engine().connect() as conn:
        row = conn.execute(sql.STATS).mappings().one()
    stats = dict(row)
    age = stats["oldest_pending_age_seconds"]
    stats["oldest_pending_age_seconds"] = 0.0 if age is None else max(0.0, float(age))
    return stats


def _claim(item: QueueItem | Claim) -> Claim:
    if isinstance(item, Claim):
        return item
    return Claim(item.id, item.claim_token)


def _store(changes: Sequence[Change], ids: Sequence[str], session: Session | None) -> None:
    """Insert ``changes`` in one statement; replay the later changes of a late one."""
    params = {
        "ids": list(ids),
        "actions": [c.action.value for c in changes],
        "models": [c.model for c in changes],
        "record_ids": [c.record_id for c in changes],
        "sheet_row_indexes": [c.sheet_row_index for c in changes],
        "payloads": [c.payload_json for c in changes],
        "max_retries": [c.max_retries for c in changes],
    }
    if session is not None:
        _insert(session.execute, params)
    else:
        with get_engine().begin() as conn:
            _insert(conn.execute, params)


def _insert(execute: Any, params: dict[str, Any]) -> None:
    execute(sql.LOCK_RECORDS, {"models": params["models"], "record_ids": params["record_ids"]})
    _replay_after_late_arrivals(execute(sql.INSERT, params).all(), execute)


def _replay_after_late_arrivals(later: Sequence[Any], execute: Any) -> None:
    """Keep a record's changes in enqueue order when one arrives late.

    ``later`` holds, per record that just received changes, the rows of the changes enqueued
    after the first of them. When one of those rows was already claimed or written, or was
    moved by an earlier replay, the record's later changes are replayed after the late one.
    """
    late = {
        Anchor(row.model, row.record_id, row.arrived_id, row.arrived_id, row.arrived_id)
        for row in later
        if row.status != QueueStatus.PENDING or row.position != row.id
    }
    copied = _replay(list(late), execute)
    if copied:
        log.warning(
            "%d change(s) arrived after later changes of their record were written; "
            "re-applying %d later change(s) after them",
            len(late),
            copied,
        )


class Anchor(NamedTuple):
    """A row whose change the record's later changes must follow (see ``_replay``)."""

    model: str
    record_id: str
    id: str
    origin_id: str
    position: str


def _replay(anchors: Sequence[Anchor], execute: Any) -> int:
    """Apply each record's changes enqueued after its anchor again, after the anchor.

    One anchor per record. The record's later changes, and the other rows of the anchor's own
    change, follow the anchor's position in enqueue order: their PENDING and claimed rows move
    there (a claimed row can go back to PENDING: a retry, ``reset_stuck``), and a later change
    with no PENDING row, being or already written, also gets a PENDING copy there. Return how
    many copies were made.
    """
    if not anchors:
        return 0
    models, record_ids, ids, origins, positions = (list(c) for c in zip(*anchors, strict=True))
    rows = execute(
        sql.LATER_CHANGES,
        {
            "models": models,
            "record_ids": record_ids,
            "anchor_ids": ids,
            "anchor_origins": origins,
            "anchor_positions": positions,
        },
    ).all()
    moves: dict[str, list[str]] = {"ids": [], "positions": []}
    copies: dict[str, list[str]] = {"ids": [], "positions": [], "originals": []}
    for (_, anchor_origin, anchor_position), suffix in itertools.groupby(
        rows, key=lambda r: (r.anchor_id, r.anchor_origin, r.anchor_position)
    ):
        after = (f"{anchor_position}.{n:06d}" for n in itertools.count(1))
        for origin, group in itertools.groupby(suffix, key=lambda r: r.origin_id):
            versions = list(group)
            for row in versions:
                if row.status != QueueStatus.COMPLETED:
                    moves["ids"].append(row.id)
                    moves["positions"].append(next(after))
            pending = any(v.status == QueueStatus.PENDING for v in versions)
            if not pending and origin != anchor_origin:  # the anchor applies its own change
                copies["ids"].append(new_id())
                copies["positions"].append(next(after))
                copies["originals"].append(versions[0].id)
    if moves["ids"]:
        execute(sql.REPOSITION_LATER, moves)
    if copies["ids"]:
        execute(sql.COPY_LATER, copies)
    return len(copies["ids"])


__all__ = [
    "Claim",
    "Failure",
    "cleanup_completed",
    "dequeue",
    "discard_failed",
    "enqueue",
    "enqueue_many",
    "get_queue_stats",
    "list_failed",
    "mark_complete",
    "mark_complete_many",
    "mark_failed",
    "mark_failed_many",
    "reset_stuck",
    "retry_failed",
]
