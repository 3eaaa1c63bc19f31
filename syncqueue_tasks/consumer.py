"""A Celery consumer that rejects malformed messages instead of dying on them.

Celery's own consumer handles the usual bad messages (unknown task, undecodable body), but a
message whose headers or body have the wrong shape (body a mapping or a number, headers not a
mapping, no ``id`` header, a bad ``timelimit``) raises out of it: the worker stops with
"Unrecoverable error", or, for a ``KeyError`` (one of the Redis transport's connection errors),
reconnects, gets the message back and loops. Here such a message is logged once (sanitized)
and rejected without requeue, and the next message is processed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer

from syncqueue_tasks.errors import sanitize_error

log = logging.getLogger(__name__)

_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class GuardedConsumer(Consumer):
    """Celery's consumer, with a guard around the handling of each task message."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Wrap Celery's handler: a malformed message is rejected, not fatal."""
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except _MALFORMED as exc:
                headers = message.headers if isinstance(message.headers, dict) else {}
                log.error(
                    "rejected a malformed message (task %r, id %r): %s",
                    str(headers.get("task"))[:100],
                    str(headers.get("id"))[:100],
                    sanitize_error(exc, limit=300),
                )
                message.reject(requeue=False)
                return None

        return on_task_received
