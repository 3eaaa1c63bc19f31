"""Backfill: enqueue the current state of every row of a tracked table as a CREATE.

Keyset pagination by the key (``WHERE key > last ORDER BY key LIMIT n``), one transaction
per batch of at most 1,000 rows holding ``FOR SHARE`` locks on the rows it reads: a row
that an application transaction is changing is read once that transaction commits, so a
CREATE never carries a value older than a change capture enqueued before it (its id is made
after the read). After each batch commits, the last key is stored (``resume``); a run that
was interrupted (Ctrl-C, a kill) goes on from there. Running it again after it finished
starts over, which is harmless: a CREATE of an existing record with the same values leaves
the sheet as it was. Rows whose record the queue knows as written, live and with exactly these
values (``sync_record``'s state, ``records.RecordState``), with no change waiting or in a
claim, are skipped: a second run costs a read of the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, cast, func, literal, select
from sqlalchemy.orm import Session

from syncqueue_tasks.capture import changes, registry, resume
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.progress import Progress
from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.values import to_json
from syncqueue_tasks.core.records import RecordState
from syncqueue_tasks.core.validation import validate_limit
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import sql

MAX_BATCH = 1000


@dataclass(frozen=True)
class BackfillReport:
    """What one run did: rows read, CREATEs enqueued, rows skipped as already synced."""

    model: str
    rows: int
    enqueued: int
    skipped: int
    resumed: bool
    seconds: float


def backfill(
    bind: Session | Engine,
    source: Tracked | type | str,
    *,
    batch_size: int = MAX_BATCH,
    restart: bool = False,
    progress: Callable[[Progress], None] | None = None,
    state_dir: Path | None = None,
) -> BackfillReport:
    """Enqueue a CREATE with every tracked field for each row of ``source``.

    ``source``: a model name or class given to ``track``, or a ``Tracked`` from
    ``table_source`` (a table no ORM class tracks). ``bind``: an engine, or a session whose
    engine is used (batches run in transactions of their own). ``restart`` ignores a stored
    resume point. ``progress`` is called after every batch. The resume point lives in
    ``state_dir`` (default ``$SYNCQUEUE_DATA_DIR/backfill``).
    """
    batch_size = validate_limit("batch_size", batch_size, MAX_BATCH)
    tracked = _resolve(source)
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    if not isinstance(engine, Engine):
        raise CaptureError("backfill needs an engine, or a session bound to one")
    path = resume.path_for(state_dir or get_settings().data_dir / "backfill", tracked.model)
    if restart:
        resume.clear(path)
    point = resume.load(path, tracked)
    last, done = (point.last_key, point.done) if point else (None, 0)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(tracked.table)).scalar_one()
    started = time.monotonic()
    rows = enqueued = 0
    while batch := _enqueue_batch(engine, tracked, last, batch_size):
        read, sent, last = batch
        rows, enqueued, done = rows + read, enqueued + sent, done + read
        resume.save(
            path, resume.ResumePoint(tracked.table.fullname, tracked.key_column, last, done)
        )
        if progress is not None:
            progress(Progress(tracked.model, done, total, rows, time.monotonic() - started))
    resume.clear(path)
    seconds = time.monotonic() - started
    return BackfillReport(tracked.model, rows, enqueued, rows - enqueued, bool(point), seconds)


def _enqueue_batch(
    engine: Engine, tracked: Tracked, last: Any, size: int
) -> tuple[int, int, Any] | None:
    """Enqueue the rows after key ``last``, in one transaction: (rows read, CREATEs
    enqueued, the last key as JSON), or None when there are no more rows."""
    with Session(engine) as session, session.begin():
        batch = session.execute(_page(tracked, last, size)).all()
        if not batch:
            return None
        creates = [
            changes.create(tracked, key, dict(zip(tracked.fields, values, strict=True)))
            for key, *values in batch
        ]
        creates = _not_yet_synced(session, tracked, creates)
        changes.enqueue(session, creates)
    return len(batch), len(creates), to_json(tracked.model, tracked.key_field, batch[-1][0])


def _resolve(source: Tracked | type | str) -> Tracked:
    if isinstance(source, Tracked):
        return source
    if isinstance(source, str):
        return registry.get(source)
    tracked = registry.for_class(source)
    if tracked is None:
        raise CaptureError(
            f"{getattr(source, '__name__', source)!r} is not tracked; call capture.track() "
            "first, or pass capture.table_source(...)"
        )
    return tracked


def _page(tracked: Tracked, last: Any, size: int) -> Any:
    """The next ``size`` rows after key ``last``, locked FOR SHARE."""
    key = tracked.column(tracked.key_field)
    query = select(key, *(tracked.column(f) for f in tracked.fields))
    if last is not None:
        query = query.where(key > cast(literal(last), key.type))
    return query.order_by(key).limit(size).with_for_update(read=True)


def _not_yet_synced(
    session: Session, tracked: Tracked, creates: Sequence[changes.Change]
) -> list[changes.Change]:
    """Drop the CREATEs that would change nothing: their record is settled (no change waiting
    or claimed), live, and every field they carry holds their value already."""
    ids = [c["record_id"] for c in creates]
    settled = {
        row.record_id: RecordState(
            row.fields, row.versions, row.deleted_id, row.created_id, row.touched_id
        )
        for row in session.execute(sql.SETTLED_RECORDS, {"model": tracked.model, "record_ids": ids})
    }
    return [c for c in creates if not _holds(settled.get(c["record_id"]), c["payload"])]


def _holds(state: RecordState | None, payload: dict[str, Any]) -> bool:
    """Whether ``state`` is a live record whose fields already have ``payload``'s values."""
    if state is None or not state.live:
        return False
    missing = object()
    return all(state.fields.get(name, missing) == value for name, value in payload.items())
