"""The synced state of records, in bulk: what the writer last wrote for each (``sync_record``).

Read by ``verify`` (a whole model) and by the Sheets writer (the few records whose row a
misplaced write touched; it is given :func:`states_reader`). One statement
(``sql.SYNCED_RECORDS``), streamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from syncqueue_tasks.core.records import RecordState, SyncedRecord, SyncedStates
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import get_engine


def synced_states(
    model: str, record_ids: Sequence[str] | None = None, *, engine: Engine | None = None
) -> dict[str, SyncedRecord]:
    """``model``'s records (all, or ``record_ids``) -> their synced state, read on ``engine``
    (default: this process's database)."""
    params = {"model": model, "record_ids": None if record_ids is None else list(record_ids)}
    out: dict[str, SyncedRecord] = {}
    with (engine or get_engine()).connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
            sql.SYNCED_RECORDS, params
        )
        for r in rows:
            out[r.record_id] = SyncedRecord(state_of(r), r.claimed)
    return out


def state_of(row: Any) -> RecordState:
    """A ``RecordState`` from a row with the state columns (``fields``, ``versions``,
    ``deleted_id``, ``created_id``, ``touched_id``)."""
    return RecordState(
        dict(row.fields), dict(row.versions), row.deleted_id, row.created_id, row.touched_id
    )


def states_reader(engine: Engine) -> SyncedStates:
    """The ``SyncedStates`` a writer is given: records' synced states read on ``engine``."""

    def read(model: str, record_ids: Sequence[str]) -> dict[str, RecordState]:
        return {r: s.state for r, s in synced_states(model, record_ids, engine=engine).items()}

    return read


__all__ = ["SyncedRecord", "state_of", "states_reader", "synced_states"]
