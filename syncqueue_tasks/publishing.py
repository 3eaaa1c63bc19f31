"""``EnqueueTask``: a Celery task base whose ``.delay()`` validates, never blocks, never loses.

In the caller, ``apply_async`` (and so ``delay``) validates the arguments (``ValidationError``
raised right there) and gives the change its id, which travels with it (a change stored or
delivered twice never makes a second row). Then, by ``SYNCQUEUE_ENQUEUE_MODE``:

- ``direct`` (default): store the change in PostgreSQL, the source of truth, in one short
  transaction, and ask for a ``process_batch`` soon (debounced). Only if the database does not
  answer, publish the message for a worker to store later. Accepted means committed: a killed
  worker or a Redis restart cannot lose it, and one process's changes are stored in order.
- ``broker``: publish the message (no publish retries, short socket timeouts), and store it
  in PostgreSQL only if publishing fails. The caller never touches the database while the
  broker is up; but kombu's Redis transport can drop a message whose worker is SIGKILLed
  between taking it and recording it as unacknowledged, and messages stored by several
  workers can arrive out of order (the queue replays later changes after a late one).

Only when both the database and the broker refuse a change does it raise ``EnqueueError``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.result import AsyncResult
from sqlalchemy.exc import SQLAlchemyError

from syncqueue_tasks.errors import EnqueueError, sanitize_error
from syncqueue_tasks.settings import get_settings

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

    @staticmethod
    def after_store() -> None:
        """Called after the caller stored a change itself (ask for a ``process_batch``)."""

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
        if get_settings().enqueue_mode == "direct":
            try:
                self.store(prepared)
            except SQLAlchemyError as db_error:
                return self._publish_instead(prepared, task_id, options, db_error)
            self.after_store()
            return AsyncResult(task_id, app=self.app)
        try:
            return super().apply_async(kwargs=prepared, task_id=task_id, **options)
        except Exception as publish_error:
            return self._store_instead(prepared, task_id, publish_error)

    def _publish_instead(
        self,
        prepared: dict[str, Any],
        task_id: str,
        options: dict[str, Any],
        db_error: SQLAlchemyError,
    ) -> AsyncResult:
        database = sanitize_error(db_error)
        try:
            result = super().apply_async(kwargs=prepared, task_id=task_id, **options)
        except Exception as publish_error:
            raise EnqueueError(
                f"change not accepted: database: {database}; broker: "
                f"{sanitize_error(publish_error)}"
            ) from None
        log.warning("%s: database unavailable (%s); handed to the broker", self.name, database)
        return result

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
