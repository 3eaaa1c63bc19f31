"""Broker messages a worker proved invalid, kept for an operator: listed, retried, discarded.

An enqueue message whose change can never be stored as it is (a ``ValidationError``: say a
model the worker's ``SYNCQUEUE_MODELS`` does not list, or arguments that do not fit the task)
is not dropped: the worker keeps it here, then acknowledges it. Once the cause is fixed (the
configuration, or the data), ``retry`` sends each one through the task's normal path again
(validated in this process, then stored or published by ``SYNCQUEUE_ENQUEUE_MODE``).

They live in one Redis hash, ``<CELERY_QUEUE>:invalid`` on ``SYNCQUEUE_REDIS_URL`` (the
broker by default), field = the message's task id. Payloads are kept as sent (they are data,
like the broker's copy); only the sanitized error is ever logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery, current_app

from syncqueue_tasks.core.errors import EnqueueError, sanitize_error
from syncqueue_tasks.redis_client import get_redis, key

WHERE = "Redis hash <queue>:invalid; see syncqueue_tasks.celery.invalid_messages"


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """One kept message: its task, the arguments it carried, why it was refused, and when."""

    id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    error: str
    kept_at: float


def keep(task: str, task_id: str, args: Any, kwargs: Any, error: str) -> None:
    """Keep one refused message (idempotent by task id). Raises ``RedisError`` if Redis fails."""
    record = {
        "task": task,
        "args": list(args) if isinstance(args, list | tuple) else args,
        "kwargs": kwargs,
        "error": error,
        "kept_at": time.time(),
    }
    get_redis().hset(key("invalid"), task_id, json.dumps(record, default=repr))


def list_invalid() -> list[InvalidMessage]:
    """Every kept message, oldest first."""
    found = []
    for field, raw in get_redis().hgetall(key("invalid")).items():
        record = json.loads(raw)
        found.append(
            InvalidMessage(
                id=field.decode() if isinstance(field, bytes) else str(field),
                task=str(record.get("task")),
                args=record.get("args") if isinstance(record.get("args"), list) else [],
                kwargs=record.get("kwargs") if isinstance(record.get("kwargs"), dict) else {},
                error=str(record.get("error")),
                kept_at=float(record.get("kept_at") or 0.0),
            )
        )
    return sorted(found, key=lambda m: (m.kept_at, m.id))


def retry_invalid(
    ids: Iterable[str] | None = None, *, app: Celery | None = None
) -> tuple[int, dict[str, str]]:
    """Send kept messages (all, or those ``ids``) through their task's ``apply_async`` again,
    on ``app`` (default: the current app), which has the package's tasks (its own app, or
    yours, ``configure``d).

    Returns how many were accepted (and removed from the hash) and, for the others, why not
    (still invalid, neither the database nor the broker took it, or no message has that id);
    those stay kept.
    """
    wanted = None if ids is None else set(ids)
    accepted = 0
    refused: dict[str, str] = {}
    seen: set[str] = set()
    for message in list_invalid():
        if wanted is not None and message.id not in wanted:
            continue
        seen.add(message.id)
        task = (app or current_app).tasks.get(message.task)
        if task is None:
            refused[message.id] = f"unknown task {message.task!r}"
            continue
        try:
            task.apply_async(message.args, message.kwargs)
        except (ValueError, TypeError, EnqueueError) as exc:
            refused[message.id] = sanitize_error(exc, limit=300)
            continue
        get_redis().hdel(key("invalid"), message.id)
        accepted += 1
    for unknown in sorted((wanted or set()) - seen):
        refused[unknown] = "no kept message has this id"
    return accepted, refused


def discard_invalid(ids: Iterable[str]) -> int:
    """Delete kept messages by id; returns how many were there."""
    fields = list(ids)
    return int(get_redis().hdel(key("invalid"), *fields)) if fields else 0
