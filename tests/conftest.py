"""Test session setup: a throwaway PostgreSQL database for the whole run.

The database is created on the server named by SYNCQUEUE_TEST_ADMIN_URL (default: the local
PostgreSQL on 127.0.0.1:5432), migrated with Alembic, exported as DATABASE_URL (so worker
subprocesses inherit it), and dropped at the end of the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from dbutil import alembic_config, create_database, drop_database, use_database
from sqlalchemy import text

from syncqueue_tasks.db import dispose_engine, get_engine
from syncqueue_tasks.settings import get_settings

_DB_NAME = f"syncqueue_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def pytest_sessionstart(session: pytest.Session) -> None:
    use_database(create_database(_DB_NAME))
    command.upgrade(alembic_config(), "head")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    dispose_engine()
    drop_database(_DB_NAME)


@pytest.fixture
def db() -> Iterator[None]:
    """An empty ``sync_queue`` and default settings for one test."""
    get_settings.cache_clear()
    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE sync_queue"))
    yield
    get_settings.cache_clear()
