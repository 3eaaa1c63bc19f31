"""The process's Redis client for the package's own keys (kick debounce, metrics counters)."""

from __future__ import annotations

from functools import lru_cache

from redis import Redis

from syncqueue_tasks.settings import get_settings


@lru_cache(maxsize=1)
def get_redis() -> Redis:
    """A client for ``SYNCQUEUE_REDIS_URL`` (default: the broker) with short timeouts: it is
    used on the caller's ``.delay()`` path, which must not wait on a sick Redis."""
    return Redis.from_url(get_settings().redis.url, socket_connect_timeout=0.1, socket_timeout=0.5)


def key(name: str) -> str:
    """A Redis key namespaced by the deployment's Celery queue name."""
    return f"{get_settings().redis.prefix}:{name}"
