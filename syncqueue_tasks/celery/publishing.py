"""``EnqueueTask``: the enqueue path, one class for ``enqueue_change`` and ``enqueue_changes``;
its ``.delay()`` validates, never blocks, never loses.

In the caller, ``apply_async`` (and so ``delay``) checks the arguments against the task's
public signature (``TypeError`` naming the task) and validates them (``ValidationError``),
both before anything is published or stored, and gives each change its id, which travels with
it (a change stored or delivered twice never makes a second row). Each side validates once:
what is stored is what was validated (``Prepared``), never validated again. Then, by
``SYNCQUEUE_ENQUEUE_MODE``:

- ``direct`` (default): store the change in PostgreSQL, the source of truth, in one statement
  (one round trip) with short lock and statement timeouts (``SYNCQUEUE_ENQUEUE_TIMEOUT_MS``),
  and ask for a ``process_batch`` soon (debounced). If the database does not answer, or a
  record of the change is held by an open transaction, or the store is slow, publish the
  message for a worker to store later instead: ``.delay()`` never waits long.
- ``broker``: publish the message (no publish retries, short socket timeouts), and store it
  in PostgreSQL only if publishing fails.

Only when both the database and the broker refuse a change does it raise ``EnqueueError``.

In the worker (``__call__``), a message ends only once its change is stored, or once it is
proven invalid:

- every database error is retried in the task, with backoff, for up to
  ``celery_config.ENQUEUE_RETRY_SECONDS``; then the message is handed back to the broker
  (``Reject(requeue=True)``; if even that fails it stays unacknowledged and the broker
  redelivers it). Nothing is republished, so no retry can be lost on the way;
- a message that cannot be a change (``ValidationError``, arguments that do not fit the task)
  is kept for an operator (``syncqueue_tasks.celery.invalid_messages``), then acknowledged (Celery
  logs the task as "ignored").

Celery logs a ``Reject`` at WARNING with a traceback; a hand-back is expected and its reason is
sanitized already, so the traceback is dropped from that record (``_HandBackWithoutTraceback``).

The enqueue tasks acknowledge late (after the store) and a message whose worker process died
goes back to the queue (``acks_late``, ``reject_on_worker_lost``).
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from celery import Task
from celery.exceptions import Ignore, Reject
from celery.result import AsyncResult
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncqueue_tasks.celery import config as celery_config
from syncqueue_tasks.celery import invalid_messages
from syncqueue_tasks.celery.kick import kick
from syncqueue_tasks.core.errors import EnqueueError, sanitize_error
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.validation import (
    Change,
    validate_change,
    validate_changes,
    validate_item_id,
)
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.queue import assign_ids, default_queue

log = logging.getLogger(__name__)


class _HandBackWithoutTraceback(logging.Filter):
    """Keep Celery's "Task ...[id] reject requeue=True: <reason>" line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Reject):
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("celery.app.trace").addFilter(_HandBackWithoutTraceback())

#: What a failed store raises when the database, not the change, is the problem.
STORE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, psycopg.Error, OSError)

_BACKOFF_BASE = 0.2  # seconds before the 2nd attempt; doubles, with jitter, up to the cap
_BACKOFF_CAP = 5.0
_KEEP_RETRY_PAUSE = 1.0  # the invalid-message store (Redis) is down: wait before handing back


def _message(change: Change) -> dict[str, Any]:
    """A validated change as a message carries it (normalized values, payload as given)."""
    return {
        "action": change.action.value,
        "model": change.model,
        "record_id": change.record_id,
        "payload": change.payload,
        "sheet_row_index": change.sheet_row_index,
        "max_retries": change.max_retries,
    }


def store_retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): equal jitter."""
    ceiling = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Prepared:
    """A call, validated: its changes, their ids, and ``message``, the task's keyword
    arguments that carry them to a worker."""

    changes: tuple[Change, ...]
    ids: tuple[str, ...]
    message: dict[str, Any]


class EnqueueTask(Task):  # type: ignore[misc, unused-ignore]  # Celery is untyped
    """The enqueue tasks' class. ``one_change`` (an option of the task's declaration): the task
    takes one change (``enqueue_change``'s arguments), else a list (``enqueue_changes``')."""

    abstract = True
    acks_late = True  # the message ends after the change is stored
    reject_on_worker_lost = True  # a pool process killed mid-store: the message is redelivered
    one_change = False

    def prepare(self, *args: Any, **kwargs: Any) -> Prepared:
        """Check a call of the task (``TypeError``) and validate it (``ValidationError``);
        give each change its id (the caller's ``item_id`` / ``item_ids`` when given)."""
        return self._validated(self.bind_arguments(args, kwargs))

    def _validated(self, arguments: dict[str, Any]) -> Prepared:
        """``prepare`` on the call's arguments by parameter name."""
        limits = get_settings().limits
        if self.one_change:
            change = validate_change(
                arguments["action"],
                arguments["model"],
                arguments["record_id"],
                arguments["payload"],
                arguments.get("sheet_row_index"),
                arguments.get("max_retries"),
                limits=limits,
            )
            item_id = arguments.get("item_id")
            ids = [new_id() if item_id is None else validate_item_id(item_id)]
            return Prepared((change,), tuple(ids), {**_message(change), "item_id": ids[0]})
        changes = validate_changes(arguments["changes"], limits)
        ids = assign_ids(len(changes), arguments.get("item_ids"))
        message = {"changes": [_message(c) for c in changes], "item_ids": ids}
        return Prepared(tuple(changes), tuple(ids), message)

    @staticmethod
    def store(prepared: Prepared, session: Session | None = None, fail_fast: bool = False) -> None:
        """Write the prepared changes to PostgreSQL in one statement, ids already stored skipped
        (in ``session`` if given; ``fail_fast``: the caller's direct store, which gives up
        within ``SYNCQUEUE_ENQUEUE_TIMEOUT_MS``)."""
        if prepared.ids:
            default_queue().store(
                prepared.changes, prepared.ids, session=session, fail_fast=fail_fast
            )

    def accept(self, prepared: Prepared) -> tuple[str, ...]:
        """Worker side: store durably (see :meth:`store_durably`), ask for a
        ``process_batch`` soon; return the ids."""
        self.store_durably(prepared)
        if prepared.ids:
            kick(self.app)
        return prepared.ids

    def describe(self, prepared: Prepared) -> str:
        """A short, payload-free description for logs and Flower: ``UPDATE Request '42'``,
        ``25 changes``."""
        if self.one_change:
            c = prepared.changes[0]
            return f"{c.action.value} {c.model} {c.record_id!r:.80}"
        return f"{len(prepared.ids)} changes"

    # ------------------------------------------------------------------ caller side

    def bind_arguments(self, args: Any, kwargs: Any) -> dict[str, Any]:
        """The call's arguments by parameter name; ``TypeError`` naming the task if they do
        not fit its signature (missing, unexpected or too many arguments)."""
        public = self.name.rsplit(".", 1)[-1]
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise TypeError(f"{public}(): args must be a list and kwargs a mapping")
        try:
            bound = inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{public}(): {exc}") from None
        return dict(bound.arguments)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Validate, then store or publish (by mode), the other one as the fallback."""
        prepared = self._validated(self.bind_arguments(args or (), kwargs or {}))
        # The message's id: the (first) change's, for tracing.
        task_id = task_id or (prepared.ids[0] if prepared.ids else new_id())
        options["retry"] = False  # a publish retry loop would block the caller
        # Logs and Flower show the message's repr: keep payloads (data) out of it, and small.
        options.setdefault("argsrepr", "()")
        options.setdefault("kwargsrepr", self.describe(prepared))
        if get_settings().tasks.enqueue_mode == "direct":
            try:
                self.store(prepared, fail_fast=True)
            except STORE_ERRORS as db_error:
                return self._publish_instead(prepared, task_id, options, db_error)
            if prepared.ids:
                kick(self.app)
            return AsyncResult(task_id, app=self.app)
        try:
            return super().apply_async(kwargs=prepared.message, task_id=task_id, **options)
        except Exception as publish_error:
            return self._store_instead(prepared, task_id, publish_error)

    def _publish_instead(
        self,
        prepared: Prepared,
        task_id: str,
        options: dict[str, Any],
        db_error: BaseException,
    ) -> AsyncResult:
        database = sanitize_error(db_error)
        try:
            result = super().apply_async(kwargs=prepared.message, task_id=task_id, **options)
        except Exception as publish_error:
            raise EnqueueError(
                f"change not accepted: database: {database}; broker: "
                f"{sanitize_error(publish_error)}"
            ) from None
        log.warning("%s: not stored in time (%s); handed to the broker", self.name, database)
        return result

    def _store_instead(
        self, prepared: Prepared, task_id: str, publish_error: Exception
    ) -> AsyncResult:
        broker = sanitize_error(publish_error)
        try:
            self.store(prepared)
        except STORE_ERRORS as db_error:
            raise EnqueueError(
                f"change not accepted: broker: {broker}; database: {sanitize_error(db_error)}"
            ) from None
        log.warning("%s: broker unavailable (%s); stored in PostgreSQL directly", self.name, broker)
        return AsyncResult(task_id, app=self.app)

    # ------------------------------------------------------------------ worker side

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task on a message: it ends stored, kept as invalid, or handed back."""
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        try:
            self.bind_arguments(args, kwargs)
            return super().__call__(*args, **kwargs)
        except Reject:
            raise
        except Exception as exc:  # ValidationError, arguments that do not fit, anything else
            self._keep_invalid(args, kwargs, exc)
            raise Ignore() from None

    def store_durably(self, prepared: Prepared) -> None:
        """Store a prepared change, retrying every database error with backoff; after
        ``ENQUEUE_RETRY_SECONDS`` hand the message back to the broker (never acknowledge it
        unstored). Each attempt is bounded by ``ENQUEUE_STATEMENT_TIMEOUT``."""
        deadline = time.monotonic() + celery_config.ENQUEUE_RETRY_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                self._store_once(prepared)
                if attempt > 1:
                    log.info("%s[%s]: stored at attempt %d", self.name, self.request.id, attempt)
                return
            except STORE_ERRORS as exc:
                error = sanitize_error(exc, limit=300)
                pause = store_retry_delay(attempt)
                if time.monotonic() + pause >= deadline:
                    log.warning(
                        "%s[%s]: not stored after %d attempts (%s); handed back to the broker",
                        self.name, self.request.id, attempt, error,
                    )  # fmt: skip
                    raise Reject(error, requeue=True) from None
                log.warning(
                    "%s[%s]: store failed (%s); attempt %d again in %.1fs",
                    self.name, self.request.id, error, attempt + 1, pause,
                )  # fmt: skip
                time.sleep(pause)

    def _store_once(self, prepared: Prepared) -> None:
        with Session(default_queue().database.engine) as session, session.begin():
            timeout = str(int(celery_config.ENQUEUE_STATEMENT_TIMEOUT * 1000))
            session.execute(sql.SET_STORE_TIMEOUTS, {"ms": timeout})
            self.store(prepared, session)

    def _keep_invalid(self, args: Any, kwargs: Any, exc: Exception) -> None:
        task_id = str(self.request.id)
        error = sanitize_error(exc, limit=300)
        try:
            invalid_messages.keep(self.name, task_id, args, kwargs, error)
        except (RedisError, OSError) as keep_error:
            log.error(
                "%s[%s]: invalid message (%s) could not be kept (%s); handed back to the broker",
                self.name, task_id, error, sanitize_error(keep_error),
            )  # fmt: skip
            time.sleep(_KEEP_RETRY_PAUSE)
            raise Reject(error, requeue=True) from None
        log.error(
            "%s[%s]: invalid message kept for an operator (%s): %s",
            self.name, task_id, invalid_messages.WHERE, error,
        )  # fmt: skip
