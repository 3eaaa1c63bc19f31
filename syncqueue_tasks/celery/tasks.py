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

from celery import Celery, current_app
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from syncqueue_tasks.celery import batch
from syncqueue_tasks.celery import config as celery_config
from syncqueue_tasks.celery.publishing import EnqueueTask
from syncqueue_tasks.celery.setup import syncqueue_task, use_package_app_unless_own
from syncqueue_tasks.core.errors import ValidationError, sanitize_error
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.validation import (
    validate_batch_size,
    validate_change,
    validate_changes,
    validate_item_id,
)
from syncqueue_tasks.redis_client import get_redis, key
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue

log = logging.getLogger(__name__)


class EnqueueChangeTask(EnqueueTask):
    """``enqueue_change``'s caller side: validation, id, storage."""

    def after_store(self) -> None:
        """Ask for a ``process_batch`` soon, through this task's app."""
        kick(self.app)

    @staticmethod
    def prepare(
        action: Any,
        model: Any,
        record_id: Any,
        payload: Any,
        sheet_row_index: Any = None,
        item_id: Any = None,
        *,
        max_retries: Any = None,
    ) -> dict[str, Any]:
        """Validate one change; the message carries normalized values and the id."""
        limits = get_settings().limits
        change = validate_change(
            action, model, record_id, payload, sheet_row_index, max_retries, limits=limits
        )
        return {
            "action": change.action.value,
            "model": change.model,
            "record_id": change.record_id,
            "payload": change.payload,
            "sheet_row_index": change.sheet_row_index,
            "item_id": new_id() if item_id is None else validate_item_id(item_id),
            "max_retries": change.max_retries,
        }

    @staticmethod
    def store(
        kwargs: dict[str, Any], session: Session | None = None, fail_fast: bool = False
    ) -> None:
        """Insert the change (a no-op if its id is already stored)."""
        queue.enqueue(
            kwargs["action"],
            kwargs["model"],
            kwargs["record_id"],
            kwargs["payload"],
            sheet_row_index=kwargs.get("sheet_row_index"),
            item_id=kwargs.get("item_id"),
            max_retries=kwargs.get("max_retries"),
            session=session,
            fail_fast=fail_fast,
        )

    @staticmethod
    def message_id(kwargs: dict[str, Any]) -> str:
        """The change's id."""
        return str(kwargs["item_id"])

    @staticmethod
    def describe(kwargs: dict[str, Any]) -> str:
        """``UPDATE Request 42``."""
        return f"{kwargs['action']} {kwargs['model']} {kwargs['record_id']!r:.80}"


class EnqueueChangesTask(EnqueueTask):
    """``enqueue_changes``'s caller side: validation, ids, storage."""

    def after_store(self) -> None:
        """Ask for a ``process_batch`` soon, through this task's app."""
        kick(self.app)

    @staticmethod
    def prepare(changes: Any, item_ids: Any = None) -> dict[str, Any]:
        """Validate every change first; the message carries them and their ids."""
        validated = validate_changes(changes, get_settings().limits)
        if item_ids is not None and (
            isinstance(item_ids, dict | str | bytes) or not hasattr(item_ids, "__iter__")
        ):
            raise ValidationError("item_ids", "must be a list of ids")
        ids = queue.assign_ids(len(validated), item_ids)
        return {
            "changes": [
                {
                    "action": c.action.value,
                    "model": c.model,
                    "record_id": c.record_id,
                    "payload": c.payload,
                    "sheet_row_index": c.sheet_row_index,
                    "max_retries": c.max_retries,
                }
                for c in validated
            ],
            "item_ids": ids,
        }

    @staticmethod
    def store(
        kwargs: dict[str, Any], session: Session | None = None, fail_fast: bool = False
    ) -> None:
        """Insert all changes in one statement (ids already stored are skipped)."""
        queue.enqueue_many(
            kwargs["changes"], item_ids=kwargs["item_ids"], session=session, fail_fast=fail_fast
        )

    @staticmethod
    def message_id(kwargs: dict[str, Any]) -> str:
        """The first change's id (a fresh one for an empty list)."""
        return str(kwargs["item_ids"][0]) if kwargs["item_ids"] else new_id()

    @staticmethod
    def describe(kwargs: dict[str, Any]) -> str:
        """``25 changes``."""
        return f"{len(kwargs['item_ids'])} changes"


@syncqueue_task("syncqueue.enqueue_change", base=EnqueueChangeTask, bind=True)
def enqueue_change(
    self: EnqueueChangeTask,
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
    self.store_durably(prepared)
    kick(self.app)
    return str(prepared["item_id"])


@syncqueue_task("syncqueue.enqueue_changes", base=EnqueueChangesTask, bind=True)
def enqueue_changes(
    self: EnqueueChangesTask, changes: list[dict[str, Any]], item_ids: list[str] | None = None
) -> int:
    """Store a list of changes in one statement, then ask for a ``process_batch`` soon."""
    prepared = self.prepare(changes, item_ids)
    self.store_durably(prepared)
    if prepared["item_ids"]:
        kick(self.app)
    return len(prepared["item_ids"])


PROCESS_BATCH = "syncqueue.process_batch"


@syncqueue_task(
    PROCESS_BATCH,
    soft_time_limit=celery_config.PROCESS_BATCH_SOFT_TIME_LIMIT,
    time_limit=celery_config.PROCESS_BATCH_TIME_LIMIT,
)
def process_batch(batch_size: int | None = None) -> dict[str, Any]:
    """Drain the queue to the writer until it is empty or the time budget is spent."""
    settings = get_settings()
    size = settings.tasks.batch_size if batch_size is None else validate_batch_size(batch_size)
    _unkick()  # enqueues from now on schedule a new run
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


def kick(app: Celery | None = None) -> None:
    """Schedule one ``process_batch`` soon through ``app`` (default: the current app), unless
    one is already scheduled (debounce). Best effort: never raises.

    The key is set when a run is scheduled and deleted when it starts, so a burst of enqueues
    schedules one run, and an enqueue during a run schedules the next. Its TTL covers a lost
    scheduled run. Beat stays the safety net when Redis is not reachable.
    """
    delay = get_settings().tasks.kick_delay
    try:
        if get_redis().set(key("kick"), 1, nx=True, px=int(delay * 1000) + 5000):
            target = current_app if app is None else app
            target.tasks[PROCESS_BATCH].apply_async(countdown=delay)
    except Exception as exc:  # best effort: Redis or broker errors of any kind
        log.debug("kick skipped: %s", sanitize_error(exc))


def _unkick() -> None:
    try:
        get_redis().delete(key("kick"))
    except (RedisError, OSError) as exc:
        log.debug("unkick skipped: %s", sanitize_error(exc))


use_package_app_unless_own()
