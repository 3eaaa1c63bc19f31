"""Celery tasks, registered as ``syncqueue.<name>``: thin wrappers over ``queue`` and ``batch``.

Apps call ``enqueue_change.delay(...)`` / ``enqueue_changes.delay([...])``. Workers run
``process_batch``; beat schedules it with ``reset_stuck`` and ``cleanup_completed``.

They are shared tasks: each Celery app of the process has them, and the names here stand for
the current app's (yours, configured with ``syncqueue_tasks.celery.setup.configure``; in a
process without an app of its own, ``syncqueue_tasks.celery_app.app``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from syncqueue_tasks.celery import batch
from syncqueue_tasks.celery import config as celery_config
from syncqueue_tasks.celery.kick import PROCESS_BATCH, kick, unkick
from syncqueue_tasks.celery.publishing import EnqueueTask
from syncqueue_tasks.celery.setup import syncqueue_task, use_package_app_unless_own
from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.core.validation import validate_batch_size
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue

log = logging.getLogger(__name__)


@syncqueue_task("syncqueue.enqueue_change", base=EnqueueTask, bind=True, one_change=True)
def enqueue_change(
    self: EnqueueTask,
    action: str,
    model: str,
    record_id: str,
    payload: dict[str, Any],
    sheet_row_index: int | None = None,
    item_id: str | None = None,
    *,
    max_retries: int | None = None,
) -> str:
    """Store one change (worker side), then ask for a ``process_batch`` soon."""
    prepared = self.prepare(
        action, model, record_id, payload, sheet_row_index, item_id, max_retries=max_retries
    )
    return self.accept(prepared)[0]


@syncqueue_task("syncqueue.enqueue_changes", base=EnqueueTask, bind=True)
def enqueue_changes(
    self: EnqueueTask, changes: list[dict[str, Any]], item_ids: list[str] | None = None
) -> int:
    """Store a list of changes in one statement, then ask for a ``process_batch`` soon."""
    return len(self.accept(self.prepare(changes, item_ids)))


@syncqueue_task(
    PROCESS_BATCH,
    soft_time_limit=celery_config.PROCESS_BATCH_SOFT_TIME_LIMIT,
    time_limit=celery_config.PROCESS_BATCH_TIME_LIMIT,
)
def process_batch(batch_size: int | None = None) -> dict[str, Any]:
    """Drain the queue to the writer until it is empty or the time budget is spent."""
    settings = get_settings()
    size = settings.tasks.batch_size if batch_size is None else validate_batch_size(batch_size)
    unkick()  # enqueues from now on schedule a new run
    try:
        report = batch.process(
            batch.process_writer(),
            batch_size=size,
            time_budget=min(
                settings.tasks.batch_time_budget, celery_config.PROCESS_BATCH_SOFT_TIME_LIMIT / 2
            ),
            interrupts=(SoftTimeLimitExceeded,),
        )
    except OperationalError as exc:
        log.warning("process_batch: database unavailable: %s", sanitize_error(exc))
        return {"error": "database unavailable"}
    if report.claimed:
        log.info(
            "process_batch: %d claimed, %d completed, %d retried, %d failed, %d not owned "
            "in %d batch(es), %.2fs",
            report.claimed,
            report.completed,
            report.retried,
            report.failed,
            report.not_owned,
            report.batches,
            report.seconds,
        )
    return {
        "claimed": report.claimed,
        "completed": report.completed,
        "retried": report.retried,
        "failed": report.failed,
        "not_owned": report.not_owned,
    }


@syncqueue_task("syncqueue.reset_stuck")
def reset_stuck(older_than_minutes: float = 10) -> int:
    """Return items whose claim is older than the threshold to PENDING, and schedule a run."""
    count = queue.reset_stuck(older_than_minutes)
    log.info("reset_stuck: %d item(s) older than %g min back to PENDING", count, older_than_minutes)
    if count:
        kick()  # written now, not at the next beat of process_batch
    return count


@syncqueue_task("syncqueue.cleanup_completed")
def cleanup_completed(older_than_days: float = 7) -> int:
    """Delete old COMPLETED items, in chunks."""
    count = queue.cleanup_completed(older_than_days)
    log.info("cleanup_completed: %d item(s) older than %g days deleted", count, older_than_days)
    return count


@syncqueue_task("syncqueue.queue_stats")
def queue_stats() -> queue.QueueStats:
    """Return and log the queue's stats."""
    stats = queue.get_queue_stats()
    log.info("queue_stats: %s", stats)
    return stats


use_package_app_unless_own()

__all__ = [
    "PROCESS_BATCH",
    "cleanup_completed",
    "enqueue_change",
    "enqueue_changes",
    "kick",
    "process_batch",
    "queue_stats",
    "reset_stuck",
]
