"""Ask for a ``process_batch`` soon, debounced: ``kick(app)`` after a store, ``unkick`` when a
run starts.

The debounce key is set when a run is scheduled and deleted when one starts, so a burst of
enqueues schedules one run, and an enqueue during a run schedules the next. Its TTL covers a
lost scheduled run; beat stays the safety net when Redis is not reachable. The key is per
queue that ``process_batch`` goes to on the app (``syncqueue:kick:<queue>``): two apps, or two
deployments, on one Redis never suppress each other's runs.
"""

from __future__ import annotations

import logging

from celery import Celery, current_app

from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.redis_client import get_redis, key
from syncqueue_tasks.settings import get_settings

log = logging.getLogger(__name__)

PROCESS_BATCH = "syncqueue.process_batch"


def kick(app: Celery | None = None) -> None:
    """Schedule one ``process_batch`` soon through ``app`` (default: the current app), unless
    one is already scheduled for its queue. Best effort: never raises."""
    delay = get_settings().tasks.kick_delay
    target = current_app if app is None else app
    try:
        if get_redis().set(kick_key(target), 1, nx=True, px=int(delay * 1000) + 5000):
            target.tasks[PROCESS_BATCH].apply_async(countdown=delay)
    except Exception as exc:  # best effort: Redis or broker errors of any kind
        log.debug("kick skipped: %s", sanitize_error(exc))


def unkick(app: Celery | None = None) -> None:
    """A run of ``app``'s (default: the current app's) ``process_batch`` starts: enqueues from
    now on schedule a new one. Best effort."""
    try:
        get_redis().delete(kick_key(current_app if app is None else app))
    except Exception as exc:  # Redis errors, or an app that cannot route
        log.debug("unkick skipped: %s", sanitize_error(exc))


def kick_key(app: Celery) -> str:
    """The debounce key of the queue ``app`` routes ``process_batch`` to."""
    queue = app.amqp.router.route({}, PROCESS_BATCH)["queue"].name
    return key(f"kick:{queue}")
