"""The debounced ``process_batch`` kick is per queue: two Celery apps (two deployments, or
yours and the package's) sharing one Redis never suppress each other's runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from conftest import TEST_QUEUE
from dbutil import REDIS_URL
from redis import Redis

from syncqueue_tasks.celery.kick import kick, kick_key, unkick
from syncqueue_tasks.celery.setup import configure

pytestmark = pytest.mark.integration


@pytest.fixture
def two_apps() -> Iterator[tuple[Celery, Celery]]:
    """Two apps on the test Redis, each routing the package's tasks to a queue of its own."""
    apps = {}
    for suffix in ("a", "b"):
        app = Celery(f"kick-{suffix}", broker=REDIS_URL)
        configure(app, queue=f"{TEST_QUEUE}_{suffix}", schedule=False)
        apps[f"{TEST_QUEUE}_{suffix}"] = app
    yield apps[f"{TEST_QUEUE}_a"], apps[f"{TEST_QUEUE}_b"]
    with Redis.from_url(REDIS_URL) as redis:
        for queue, app in apps.items():
            redis.delete(queue, f"_kombu.binding.{queue}", kick_key(app))
            app.close()


def _waiting(queue: str) -> int:
    with Redis.from_url(REDIS_URL) as redis:
        return int(redis.llen(queue))


def test_each_apps_queue_gets_its_own_kick(two_apps: tuple[Celery, Celery]) -> None:
    a, b = two_apps
    queue_a, queue_b = f"{TEST_QUEUE}_a", f"{TEST_QUEUE}_b"
    assert kick_key(a) != kick_key(b)
    kick(a)
    kick(b)  # a shared key would have swallowed this one: b's changes would wait for beat
    assert (_waiting(queue_a), _waiting(queue_b)) == (1, 1)
    kick(a)  # debounced: a run of a's is already scheduled
    assert _waiting(queue_a) == 1
    unkick(a)  # a's run started: the next enqueue schedules another
    kick(a)
    kick(b)  # b's is still scheduled
    assert (_waiting(queue_a), _waiting(queue_b)) == (2, 1)
