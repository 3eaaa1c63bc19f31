"""No echo: changes made inside ``suppressed(session)`` are not enqueued, by any capture path.

The ORM listeners skip a session while a block is open (a counter in ``session.info``), and
the block sets ``syncqueue.capture = 'off'`` for the session's transaction (``set_config``
with ``is_local``, i.e. ``SET LOCAL``), the switch the database triggers read. Entering
flushes what the session already holds (those changes are captured as usual); leaving
flushes what the block did (so it is flushed, and skipped, while still suppressed) and puts
the setting back. A transaction begun inside the block (after a commit) gets the setting
too, and so does the transaction left after a savepoint is rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, SessionTransaction

from syncqueue_tasks.capture import trigger_sql
from syncqueue_tasks.capture.errors import CaptureError

GUC = "syncqueue.capture"  # 'off' while suppressed; the trigger functions read it
_DEPTH = "syncqueue.capture.suppressed"  # session.info: open suppressed() blocks
_SET_ON = "syncqueue.capture.set_on"  # session.info: (connection, value before 'off')

_Bound = TypeVar("_Bound", Session, Connection)


@contextlib.contextmanager
def suppressed(session: _Bound) -> Iterator[_Bound]:
    """Within the block, nothing ``session`` writes is enqueued (importers of sheet edits).

    A Core ``Connection`` works too (in a transaction): the triggers' switch is off for the
    block, then put back.
    """
    if isinstance(session, Connection):
        with _suppressed_connection(session):
            yield session
        return
    session.flush()
    session.info[_DEPTH] = session.info.get(_DEPTH, 0) + 1
    try:
        _switch_off(session, session.connection())
        yield session
        session.flush()
    finally:
        session.info[_DEPTH] -= 1
        if not session.info[_DEPTH]:
            del session.info[_DEPTH]
            _put_back(session)


@contextlib.contextmanager
def _suppressed_connection(connection: Connection) -> Iterator[None]:
    if not connection.in_transaction():
        raise CaptureError(
            "capture.suppressed(connection) needs a transaction (connection.begin())"
        )
    before = connection.execute(trigger_sql.SWITCH_OFF, {"guc": GUC}).scalar()
    yield
    if not _aborted(connection):
        connection.execute(trigger_sql.PUT_BACK, {"guc": GUC, "value": before or ""})


def is_suppressed(session: Session | None) -> bool:
    """Whether ``session`` is inside a ``suppressed`` block."""
    return session is not None and session.info.get(_DEPTH, 0) > 0


def _switch_off(session: Session, connection: Connection, *, again: bool = False) -> None:
    """Set the switch to 'off' for the connection's transaction (once, unless ``again``);
    remember the value it had before."""
    stored = session.info.get(_SET_ON)
    known = stored is not None and stored[0] is connection
    if (known and not again) or _aborted(connection):
        return
    before = connection.execute(trigger_sql.SWITCH_OFF, {"guc": GUC}).scalar()
    if not known:
        session.info[_SET_ON] = (connection, before)


def _put_back(session: Session) -> None:
    """Restore the setting on the transaction still open, unless PostgreSQL aborted it."""
    stored = session.info.pop(_SET_ON, None)
    if stored is None or not _usable(session):
        return
    connection, before = stored
    if session.connection() is connection and not _aborted(connection):
        connection.execute(trigger_sql.PUT_BACK, {"guc": GUC, "value": before or ""})


def _usable(session: Session) -> bool:
    """Whether the session has a transaction that can still run statements."""
    transaction = session.get_transaction()
    return transaction is not None and transaction.is_active


def _aborted(connection: Connection) -> bool:
    """Whether PostgreSQL refuses statements in the connection's transaction until rollback."""
    driver: Any = connection.connection.driver_connection
    status = getattr(getattr(driver, "info", None), "transaction_status", None)
    return status == psycopg.pq.TransactionStatus.INERROR


@event.listens_for(Session, "after_begin")
def _on_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    if is_suppressed(session):
        _switch_off(session, connection)


@event.listens_for(Session, "after_transaction_end")
def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested and is_suppressed(session) and _usable(session):
        # ROLLBACK TO SAVEPOINT undoes a SET LOCAL made inside the savepoint
        _switch_off(session, session.connection(), again=True)
