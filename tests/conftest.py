"""Test session setup: the three tiers, and a throwaway PostgreSQL database for the run.

Every test carries exactly one tier marker (``TIERS``), checked at collection:

- ``unit``: no services; PostgreSQL and Redis may be unreachable.
- ``integration``: a real PostgreSQL and/or Redis.
- ``system``: real Celery workers and beat, the embedded stack, a browser, soak, packaging.

When the selected tests include one that is not ``unit``, a database is created on the server
named by SYNCQUEUE_TEST_ADMIN_URL (default: the local PostgreSQL on 127.0.0.1:5432), migrated
with Alembic, exported as DATABASE_URL before any test runs (so worker subprocesses inherit
it), and dropped at the end of the run. A run of unit tests alone touches neither service.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from celery import Celery
from dbutil import (
    REDIS_URL,
    alembic_config,
    create_database,
    drop_database,
    truncate,
    use_database,
)
from redis import Redis

from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.db import dispose_engine

pytest_plugins = ("celery.contrib.pytest",)

_RUN = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
_DB_NAME = f"syncqueue_test_{_RUN}"
# Celery: the real Redis, and a queue (and Redis key prefix) of this run's own.
TEST_QUEUE = f"syncqueue_test_{_RUN}"


TIERS = ("unit", "integration", "system")
# "tiered": every collected test has one tier; "used": this run made the database (and so
# uses Redis too).
_run = {"tiered": False, "used": False}


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ["CELERY_QUEUE"] = TEST_QUEUE
    os.environ["CELERY_BROKER_URL"] = REDIS_URL
    os.environ.pop("SYNCQUEUE_REDIS_URL", None)


def tier_errors(items: list[pytest.Item]) -> list[str]:
    """One line per test that does not carry exactly one of the ``TIERS`` markers."""
    errors = []
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) != 1:
            found = ", ".join(tiers) or "none"
            errors.append(f"{item.nodeid}: tier markers {found}")
    return errors


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: an untiered test never hides
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = tier_errors(items)
    if errors:
        raise pytest.UsageError(
            f"every test needs exactly one tier marker ({', '.join(TIERS)}); mark the module "
            "with pytestmark = pytest.mark.<tier> (see tests/conftest.py):\n  "
            + "\n  ".join(errors)
        )
    _run["tiered"] = True


def pytest_collection_finish(session: pytest.Session) -> None:
    """Make the run's database when a selected test needs services (unit tests do not)."""
    if session.config.option.collectonly or not _run["tiered"]:
        return  # (pytest calls this hook even when the tier check failed)
    if any(not item.get_closest_marker("unit") for item in session.items):
        use_database(create_database(_DB_NAME))
        _run["used"] = True
        command.upgrade(alembic_config(), "head")


def purge_broker(*, bindings: bool = False) -> None:
    """Drop this run's queue, and this run's messages kombu holds as unacknowledged.

    A worker killed by an earlier test leaves messages unacknowledged; the next test's worker
    would restore and store them, and count one change more than its test sent. Entries of
    other runs sharing this Redis (their routing key is their own queue) are left alone.
    ``bindings``: kombu's bindings of the run's queues too (at the end of the run only: a
    worker or producer of a running test relies on them).
    """
    redis = Redis.from_url(REDIS_URL)
    redis.delete(TEST_QUEUE, *redis.scan_iter(f"{TEST_QUEUE}*"))
    if bindings:
        redis.delete(*redis.scan_iter(f"_kombu.binding*.{TEST_QUEUE}*"), "no such key")
    for tag, raw in redis.hgetall("unacked").items():
        if _routing_key(raw, lambda m: m[2]) == TEST_QUEUE:  # [message, exchange, key]
            redis.hdel("unacked", tag)
            redis.zrem("unacked_index", tag)
    for item in redis.lrange("unacked_inflight", 0, -1):  # popped, not yet in the hash
        key = _routing_key(item, lambda m: m["properties"]["delivery_info"]["routing_key"])
        if key == TEST_QUEUE:
            redis.lrem("unacked_inflight", 1, item)
    redis.close()


def _routing_key(raw: bytes, pick: Callable[[Any], object]) -> object:
    """The routing key of a stored message, or None for bytes that are not one."""
    try:
        return pick(json.loads(raw))
    except (ValueError, LookupError, TypeError):
        return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _run["used"]:
        dispose_engine()
        drop_database(_DB_NAME)
        purge_broker(bindings=True)


@pytest.fixture
def celery_app() -> Celery:
    """Celery's pytest fixtures run the package's own app (configured by celeryconfig)."""
    from syncqueue_tasks.celery.app import app

    return app


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, object]:
    """No ping check: it needs a result backend, which this app does not have."""
    return {"perform_ping_check": False, "shutdown_timeout": 30.0}


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route process_batch to the recording test writer; return the file it appends to."""
    path = tmp_path / "written.jsonl"
    monkeypatch.setenv("SYNCQUEUE_WRITER", "recording_writer:recording")
    monkeypatch.setenv("SYNCQUEUE_JSONL_PATH", str(path))
    get_settings.cache_clear()
    return path


@pytest.fixture
def db() -> Iterator[None]:
    """An empty ``sync_queue``, an empty broker queue and default settings for one test."""
    get_settings.cache_clear()
    truncate()
    purge_broker()
    yield
    get_settings.cache_clear()
