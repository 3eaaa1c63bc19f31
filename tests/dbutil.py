"""Database helpers for tests: the test services' URLs, throwaway databases, row counts."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
from alembic.config import Config
from sqlalchemy import text

from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.db import dispose_engine, get_engine

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "SYNCQUEUE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SYNCQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def create_database(name: str) -> str:
    """Create an empty database next to the admin one; return its SQLAlchemy URL."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_database(name: str) -> None:
    """Drop a database made by ``create_database``, closing its connections."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic_config() -> Config:
    """The project's Alembic configuration, as ``alembic`` run from the repo root sees it."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["configure_logger"] = False
    return config


def use_database(url: str) -> None:
    """Point this process (and the subprocesses it starts) at ``url``."""
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    dispose_engine()


def truncate() -> None:
    """Empty the queue's tables."""
    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE sync_queue, sync_record"))


def count_rows(where: str = "true", **params: object) -> int:
    """Rows of ``sync_queue`` matching a SQL condition."""
    with get_engine().connect() as conn:
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM sync_queue WHERE {where}"), params
            ).scalar_one()
        )


def assert_records_consistent() -> None:
    """The record table agrees with the changes: every record's ``pending`` is the number of
    its PENDING changes, and a record is claimed exactly when it has PROCESSING changes, all
    under the record's own token."""
    with get_engine().connect() as conn:
        wrong = conn.execute(
            text("""
            SELECT r.model, r.record_id, r.pending, r.claim_token,
                   count(q.id) FILTER (WHERE q.status = 'PENDING') AS waiting,
                   count(q.id) FILTER (WHERE q.status = 'PROCESSING') AS claimed,
                   count(q.id) FILTER (WHERE q.status = 'PROCESSING'
                                         AND q.claim_token IS DISTINCT FROM r.claim_token)
                       AS foreign_claims
            FROM sync_record AS r
            LEFT JOIN sync_queue AS q ON q.model = r.model AND q.record_id = r.record_id
            GROUP BY r.model, r.record_id, r.pending, r.claim_token
            HAVING r.pending <> count(q.id) FILTER (WHERE q.status = 'PENDING')
                OR (r.claim_token IS NULL) <> (count(q.id) FILTER (
                       WHERE q.status = 'PROCESSING') = 0)
                OR count(q.id) FILTER (WHERE q.status = 'PROCESSING'
                                         AND q.claim_token IS DISTINCT FROM r.claim_token) > 0
        """)
        ).all()
        orphans = conn.execute(
            text("""SELECT count(*) FROM sync_queue AS q
                    WHERE NOT EXISTS (SELECT 1 FROM sync_record AS r
                                      WHERE r.model = q.model AND r.record_id = q.record_id)""")
        ).scalar_one()
    assert not wrong, f"records out of step with their changes: {wrong[:5]}"
    assert orphans == 0, f"{orphans} change(s) without a record row"
