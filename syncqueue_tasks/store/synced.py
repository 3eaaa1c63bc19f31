"""The synced state of records, in bulk: what the writer last wrote for each (``sync_record``).

Read by ``verify`` (a whole model) and by the Sheets writer (the few records whose row a
misplaced write touched). One statement (``sql.SYNCED_RECORDS``), streamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncqueue_tasks.core.records import RecordState
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import get_engine


@dataclass(frozen=True, slots=True)
class SyncedRecord:
    """A record's synced state, and whether a claim holds it right now."""

    state: RecordState
    claimed: bool


def synced_states(model: str, record_ids: Sequence[str] | None = None) -> dict[str, SyncedRecord]:
    """``model``'s records (all, or ``record_ids``) -> their synced state."""
    params = {"model": model, "record_ids": None if record_ids is None else list(record_ids)}
    out: dict[str, SyncedRecord] = {}
    with get_engine().connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=5000).execute(
            sql.SYNCED_RECORDS, params
        )
        for r in rows:
            state = RecordState(
                dict(r.fields), dict(r.versions), r.deleted_id, r.created_id, r.touched_id
            )
            out[r.record_id] = SyncedRecord(state, r.claimed)
    return out
