"""A Celery consumer that rejects malformed task messages instead of dying or wedging on them.

Celery's own consumer handles the usual bad messages (unknown task, undecodable body, a bad
``eta``), but a task message whose headers or body have the wrong shape raises out of it: the
worker stops with "Unrecoverable error", or, for a ``KeyError`` (one of the Redis transport's
connection errors), reconnects, gets the message back and loops; or, for a bad ``timelimit`` or
``stamped_headers``, raises after it took the pool's slot, which is never given back, so a
``--concurrency=1`` worker runs nothing again.

Here the shape of each task message is checked first (:func:`malformed`): ``task`` and ``id``
strings, ``timelimit`` a pair of seconds, the body ``[args list, kwargs mapping, embed mapping]``
(protocol 2; a protocol 1 body mapping is checked the same way). A malformed message, or one
on which Celery's handler still raises such an error, is logged once (sanitized) and rejected
without requeue, and the next message is processed. Messages that are not even kombu envelopes
(raw bytes, headers that are not a mapping) never get here: ``syncqueue_tasks.celery.broker_guard``
drops them in the transport.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer

from syncqueue_tasks.core.errors import sanitize_error

log = logging.getLogger(__name__)

_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _seconds_or_none(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0


def _request_problem(request: dict[str, Any], args: object, kwargs: object, embed: object) -> str:
    """What is wrong with a task request (headers, or a protocol 1 body); "" if nothing."""
    if not isinstance(request.get("task"), str):
        return "task is not a string"
    task_id = request.get("id")
    if not isinstance(task_id, str) or not task_id:
        return "id is missing or not a string"
    timelimit = request.get("timelimit")
    if timelimit is not None and not (
        isinstance(timelimit, list | tuple)
        and len(timelimit) == 2
        and all(_seconds_or_none(t) for t in timelimit)
    ):
        return "timelimit is not [hard, soft] seconds or nulls"
    stamped = request.get("stamped_headers")
    if stamped is not None and not (
        isinstance(stamped, list) and all(isinstance(s, str) for s in stamped)
    ):
        return "stamped_headers is not a list of strings"
    if not isinstance(request.get("stamps"), dict | None):
        return "stamps is not a mapping"
    if not isinstance(args, list):
        return "args is not a list"
    if not isinstance(kwargs, dict):
        return "kwargs is not a mapping"
    if not isinstance(embed, dict | None):
        return "embed is not a mapping"
    return ""


def malformed(message: Any) -> str | None:
    """Why ``message`` must be rejected before Celery handles it; None if Celery may have it.

    Messages that are not task messages, or whose body does not decode, are Celery's: it logs
    and rejects them itself.
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return "headers is not a mapping"
    try:
        body = message.decode()  # memoized: Celery does not decode it again
    except Exception:
        return None
    if "task" in headers:  # protocol 2, what Celery 5 sends
        if not (isinstance(body, list) and len(body) == 3):
            return "body is not [args, kwargs, embed]"
        args, kwargs, embed = body
        return _request_problem(headers, args, kwargs, embed) or None
    if isinstance(body, dict) and "task" in body:  # protocol 1
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        return _request_problem(body, args, kwargs, None) or None
    return None


def _describe(message: Any) -> tuple[str, str]:
    """The message's task name and id for a log line, bounded."""
    request = message.headers if isinstance(message.headers, dict) else {}
    if "task" not in request:  # protocol 1: the body holds them
        try:
            body = message.decode()
        except Exception:
            body = None
        request = body if isinstance(body, dict) else request
    return str(request.get("task"))[:100], str(request.get("id"))[:100]


class GuardedConsumer(Consumer):  # type: ignore[misc, unused-ignore]  # Celery is untyped
    """Celery's consumer, with a guard around the handling of each task message."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Wrap Celery's handler: a malformed message is rejected, not fatal."""
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            problem = malformed(message)
            if problem is None:
                try:
                    return handle(message)
                except _MALFORMED as exc:
                    problem = sanitize_error(exc, limit=300)
            task, task_id = _describe(message)
            log.error("rejected a malformed message (task %r, id %r): %s", task, task_id, problem)
            message.reject(requeue=False)
            return None

        return on_task_received
