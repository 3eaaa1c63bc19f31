"""The writer interface: a batch of record writes in, one outcome per record out.

A writer knows nothing of Celery or SQL. For each claimed record it gets a
``records.RecordWrite``: the record's claimed changes folded onto what was last written (the
action, the cells to write, the whole new state, the state before), and returns an
``Outcome`` per record key (``RecordWrite.key``), which ``process_batch`` records for all of
the record's changes:

- ``Outcome.done()``: the record is written -> its changes COMPLETED, its synced state moves on.
- ``Outcome.retry(error, retry_after=None, count_attempt=True)``: try again later. With
  ``retry_after`` (seconds) the record waits that long instead of the queue's backoff; with
  ``count_attempt=False`` (a quota answer, say) it does not use up one of its attempts.
- ``Outcome.fail(error)``: permanent; the record's changes are parked as FAILED at once.

A record missing from the returned mapping counts as a retryable failure. An exception that
escapes ``write_records`` fails the whole batch as retryable.

A writer's factory (``SYNCQUEUE_WRITER=package.module:factory``) takes no argument, or one: the
:class:`WriterContext`, with the settings and a way to read records' synced states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.core.records import RecordKey, RecordWrite, SyncedStates
from syncqueue_tasks.settings import Settings


@runtime_checkable
class Writer(Protocol):
    """Writes a batch of records to a destination (a spreadsheet, a workbook, ...)."""

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        """Apply ``writes`` and return an outcome per record key."""
        ...


@dataclass(frozen=True)
class WriterContext:
    """What a writer's factory is given: the settings (read at the edge, once) and
    ``synced_states(model, record_ids) -> {record_id: RecordState}`` (the queue's database)."""

    settings: Settings
    synced_states: SyncedStates


__all__ = ["Outcome", "OutcomeKind", "RecordKey", "RecordWrite", "Writer", "WriterContext"]
