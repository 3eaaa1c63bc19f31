"""The engines of one PostgreSQL database (:class:`Database`), and the process's own, safe
across ``fork``.

- ``Database.engine``: transactions of several statements (migrations, operator tools).
- ``Database.autocommit``: the queue's own operations. Each is ONE statement (storing,
  claiming, recording outcomes...), atomic by itself, so it runs in autocommit: one round
  trip, not BEGIN, the statement and COMMIT.
- ``Database.enqueue``: ``.delay()``'s direct store. Autocommit too, with short
  ``lock_timeout`` and ``statement_timeout`` set when a connection opens
  (``SYNCQUEUE_ENQUEUE_TIMEOUT_MS``): a record held by an open transaction, or a database that
  answers slowly, makes the store fail fast, and the change goes to the broker instead.

A ``Database`` is made from a ``DatabaseConfig`` and passed to the queue
(``QueueStore(database, ...)``); :func:`get_database` is the process's own, made from the
environment on first use (``get_engine()`` is its ``engine``).

The queue's hottest statements (storing changes, claiming, recording outcomes) go through
:func:`fetch`: psycopg directly
on a pooled connection, as a prepared statement, with SQLAlchemy's errors.

Neither pings a connection at checkout (a round trip per operation): a connection that died
(a PostgreSQL restart) fails its statement, SQLAlchemy drops the pool's older connections,
and callers that must not fail retry once (``is_disconnect``). Statement parameters never
appear in errors or logs (``hide_parameters``): they carry payloads.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, TextClause, create_engine
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, StatementError

from syncqueue_tasks.settings import DatabaseConfig, get_settings


@dataclass(frozen=True)
class Database:
    """The three engines (pools) the queue uses on one database; see the module docstring."""

    engine: Engine
    autocommit: Engine
    enqueue: Engine

    @classmethod
    def connect(cls, config: DatabaseConfig) -> Database:
        """Engines for ``config``'s database (connections open on first use)."""
        return cls(
            _create(config, "main"), _create(config, "autocommit"), _create(config, "enqueue")
        )

    def dispose(self, *, close: bool = True) -> None:
        """Close the pools (``close=False``: forget a parent process's connections)."""
        for engine in (self.engine, self.autocommit, self.enqueue):
            engine.dispose(close=close)


def _create(config: DatabaseConfig, kind: str) -> Engine:
    connect_args: dict[str, object] = {"connect_timeout": 5, "application_name": "syncqueue"}
    options: dict[str, object] = {}
    if kind == "enqueue":
        ms = config.enqueue_timeout_ms
        connect_args["options"] = f"-c lock_timeout={ms} -c statement_timeout={ms}"
    if kind in ("enqueue", "autocommit"):
        options["isolation_level"] = "AUTOCOMMIT"
    return create_engine(
        config.url,
        pool_size=config.pool_size,
        max_overflow=config.pool_size,
        pool_pre_ping=False,
        pool_timeout=10,
        hide_parameters=True,
        connect_args=connect_args,
        **options,
    )


_lock = threading.Lock()
_database: tuple[int, Database] | None = None  # (the process that made it, it)


def get_database() -> Database:
    """This process's database, made from ``DATABASE_URL`` & co. on first use.

    A child process (Celery prefork) gets fresh engines rather than the parent's sockets.
    """
    global _database
    with _lock:
        if _database is not None and _database[0] != os.getpid():
            _database[1].dispose(close=False)  # the parent's connections are the parent's
            _database = None
        if _database is None:
            _database = (os.getpid(), Database.connect(get_settings().database))
        return _database[1]


def get_engine() -> Engine:
    """This process's engine for transactions (``get_database().engine``)."""
    return get_database().engine


def fetch(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
    """The rows (named tuples) of one statement on a connection of ``engine`` (autocommit).

    Sent through psycopg directly, prepared on the connection: one round trip without the
    per-call work of SQLAlchemy's ``Connection`` and result objects. Errors are what
    ``Connection.execute`` raises (``DBAPIError`` subclasses, parameters hidden); a connection
    that died is dropped, and the pool's older ones with it (as SQLAlchemy does).
    """
    query = _driver_sql(statement, engine.dialect)
    try:
        connection = engine.raw_connection()
    except psycopg.Error as exc:  # no connection could be made (server down, refused, ...)
        raise _sqlalchemy_error(engine, query, exc, invalidated=False) from exc
    try:
        driver = connection.driver_connection
        with driver.cursor(row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
            cursor.execute(query, params, prepare=True)
            rows: list[Any] = cursor.fetchall()
            return rows
    except psycopg.Error as exc:
        dbapi_connection = connection.dbapi_connection
        dead = engine.dialect.is_disconnect(exc, dbapi_connection, None)  # type: ignore[arg-type]
        if dead:
            engine.pool._invalidate(connection, exc)
        raise _sqlalchemy_error(engine, query, exc, invalidated=dead) from exc
    finally:
        connection.close()


def _sqlalchemy_error(
    engine: Engine, query: str, exc: psycopg.Error, *, invalidated: bool
) -> StatementError:
    """``exc`` as ``Connection.execute`` would raise it: a ``DBAPIError`` subclass
    (``OperationalError``, ...), with the statement's parameters hidden."""
    return DBAPIError.instance(
        query,
        None,
        exc,
        psycopg.Error,
        hide_parameters=True,
        connection_invalidated=invalidated,
        dialect=engine.dialect,
    )


def scalar(engine: Engine, statement: TextClause, params: Mapping[str, Any]) -> Any:
    """The value of a statement's one row and column, as :func:`fetch` runs it."""
    [row] = fetch(engine, statement, params)
    return row[0]


@functools.cache
def _driver_sql(statement: TextClause, dialect: Dialect) -> str:
    """``statement`` as psycopg takes it (``%(name)s`` parameters)."""
    return str(statement.compile(dialect=dialect))


def is_disconnect(error: BaseException) -> bool:
    """Whether ``error`` says the connection died (worth one retry on a fresh connection)."""
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def dispose_engine() -> None:
    """Close this process's pools (tests and settings changes); the next use makes new ones."""
    global _database
    with _lock:
        if _database is not None:
            _database[1].dispose()
        _database = None
