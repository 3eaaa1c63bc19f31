"""``EnqueueTask``: a Celery task base whose ``.delay()`` validates, never blocks, never loses.

In the caller, ``apply_async`` (and so ``delay``):
1. validates the arguments (``ValidationError`` raised right there) and gives the change its
   id, which travels in the message (a redelivered message cannot make a second row);
2. publishes without publish retries and with short socket timeouts;
3. if publishing fails for any reason, stores the change straight in PostgreSQL, the source
   of truth, and returns; only if that fails too does it raise ``EnqueueError``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.result import AsyncResult
from sqlalchemy.exc import SQLAlchemyError

from syncqueue_tasks.errors import EnqueueError, sanitize_error

log = logging.getLogger(__name__)


class EnqueueTask(Task):
    """Base of the enqueue tasks. Subclasses define ``prepare`` and ``store``."""

    abstract = True

    @staticmethod
    def prepare(*args: Any, **kwargs: Any) -> dict[str, Any]:
        """Validate the call's arguments; return the message's kwargs (with the id(s))."""
        raise NotImplementedError

    @staticmethod
    def store(kwargs: dict[str, Any]) -> None:
        """Write a prepared change to PostgreSQL (the worker's job, and the fallback)."""
        raise NotImplementedError

    @staticmethod
    def message_id(kwargs: dict[str, Any]) -> str:
        """The id of the message: the (first) change's id, for tracing."""
        raise NotImplementedError

    @staticmethod
    def describe(kwargs: dict[str, Any]) -> str:
        """A short, payload-free description of the message for logs and Flower."""
        raise NotImplementedError

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Validate, then publish; on a publish failure, store in PostgreSQL instead."""
        prepared = self.prepare(*(args or ()), **(kwargs or {}))
        task_id = task_id or self.message_id(prepared)
        options["retry"] = False  # a publish retry loop would block the caller
        # Logs and Flower show the message's repr: keep payloads (data) out of it, and small.
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", self.describe(prepared))
        try:
            return super().apply_async(kwargs=prepared, task_id=task_id, **options)
        except Exception as publish_error:
            return self._store_instead(prepared, task_id, publish_error)

    def _store_instead(
        self, prepared: dict[str, Any], task_id: str, publish_error: Exception
    ) -> AsyncResult:
        broker = sanitize_error(publish_error)
        try:
            self.store(prepared)
        except SQLAlchemyError as db_error:
            raise EnqueueError(
                f"change not accepted: broker: {broker}; database: {sanitize_error(db_error)}"
            ) from None
        log.warning("%s: broker unavailable (%s); stored in PostgreSQL directly", self.name, broker)
        return AsyncResult(task_id, app=self.app)
