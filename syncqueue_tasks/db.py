"""The process's one SQLAlchemy engine (pooled, pre-ping), safe across ``fork``."""

from __future__ import annotations

import os
import threading

import psycopg  # noqa: F401  (loaded with the package, not inside the first enqueue)
from sqlalchemy import Engine, create_engine

from syncqueue_tasks.settings import get_settings

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None


def get_engine() -> Engine:
    """Return this process's engine, creating it from ``DATABASE_URL`` on first use.

    A child process (Celery prefork) gets a fresh engine rather than the parent's sockets.
    """
    global _engine, _engine_pid
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            if _engine is not None:
                _engine.dispose(close=False)  # the parent's connections are the parent's
            settings = get_settings()
            _engine = create_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_pool_size,
                pool_pre_ping=True,
                pool_timeout=10,
                hide_parameters=True,  # payload values never reach logs or error messages
                connect_args={"connect_timeout": 5, "application_name": "syncqueue"},
            )
            _engine_pid = os.getpid()
        return _engine


def dispose_engine() -> None:
    """Close this process's pool (tests and settings changes)."""
    global _engine, _engine_pid
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _engine_pid = None
