"""One ``process_batch`` run: claim records, write them through the writer, record outcomes;
and the writer a worker runs with (made with the settings and the queue's synced states).

Knows the queue and the writer interface, nothing of Celery. No database transaction is open
while the writer does I/O: the claim is committed before the writer is called, and the
outcomes are recorded afterwards in one statement guarded by the claim's token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from syncqueue_tasks import counters
from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import RecordKey, RecordWrite, record_write
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.queue import QueueStore, default_queue
from syncqueue_tasks.store.synced import states_reader
from syncqueue_tasks.writers.base import Writer, WriterContext
from syncqueue_tasks.writers.loading import get_writer

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What one run did (records claimed; changes completed, retried, failed, not owned)."""

    batches: int = 0
    claimed: int = 0
    records: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    not_owned: int = 0
    seconds: float = 0.0


def process(
    writer: Writer,
    *,
    batch_size: int,
    time_budget: float,
    interrupts: tuple[type[BaseException], ...] = (),
    sync_queue: QueueStore | None = None,
) -> BatchReport:
    """Drain the queue in batches until it is empty or ``time_budget`` seconds are spent.

    A batch is ``batch_size`` records, or more for a writer that asks for more: its
    ``batch_records`` attribute (the Sheets writer sizes it to what fits one request; claims
    of at most ``_CLAIM_RECORDS`` records each are taken until that many are held or the queue
    has no more), with up to ``batch_changes`` changes per claim. All of it goes to one
    ``write_records`` call. An exception of a type in ``interrupts`` (Celery's soft time limit)
    raised while writing is recorded as a retryable failure of the batch, then re-raised.
    ``sync_queue``: the queue to drain (default: the process's, ``default_queue()``).
    """
    on = sync_queue or default_queue()
    report = BatchReport()
    started = time.monotonic()
    while time.monotonic() - started < time_budget:
        claims = _claim(on, writer, batch_size)
        records = [r for claim in claims for r in claim.records]
        if not records:
            break
        report.batches += 1
        report.records += len(records)
        report.claimed += sum(len(r.changes) for r in records)
        writes = [record_write(r.key, r.base, r.changes, r.row_hint) for r in records]
        try:
            outcomes = writer.write_records(writes)
        except Exception as exc:
            error = sanitize_error(exc)
            log.warning("writer failed on a batch of %d record(s): %s", len(writes), error)
            outcomes = {w.key: Outcome.retry(error) for w in writes}
            _record(on, claims, writes, outcomes, report)
            if isinstance(exc, interrupts):
                raise
            continue
        _record(on, claims, writes, outcomes, report)
    report.seconds = time.monotonic() - started
    return report


# The most records one claim takes (queue.claim_records' limit); a writer that wants more
# gets several claims in one batch.
_CLAIM_RECORDS = 1000


def _claim(on: QueueStore, writer: Writer, batch_size: int) -> list[queue.RecordBatch]:
    """Claim the records of one batch: ``batch_size``, or the writer's ``batch_records``."""
    wanted = max(batch_size, int(getattr(writer, "batch_records", 0) or 0))
    max_changes = getattr(writer, "batch_changes", None)
    claims: list[queue.RecordBatch] = []
    held = 0
    while held < wanted:
        asked = min(_CLAIM_RECORDS, wanted - held)
        claim = on.claim_records(asked, max_changes=max_changes)
        if claim.records:
            claims.append(claim)
        held += len(claim.records)
        if len(claim.records) < asked:
            break
    return claims


def _record(
    on: QueueStore,
    claims: Sequence[queue.RecordBatch],
    writes: Sequence[RecordWrite],
    outcomes: Mapping[RecordKey, Outcome],
    report: BatchReport,
) -> None:
    states = {w.key: w.state for w in writes}
    for claim in claims:
        keys = [r.key for r in claim.records]
        done = on.finish_records(
            claim,
            {k: outcomes[k] for k in keys if k in outcomes},
            {k: states[k] for k in keys},
        )
        report.completed += done.completed
        report.retried += done.retried
        report.failed += done.failed
        report.not_owned += done.not_owned
        counters.record_outcomes(completed=done.completed, retried=done.retried, failed=done.failed)


def writer_context(sync_queue: QueueStore | None = None) -> WriterContext:
    """What a writer's factory is given: the settings, and the synced states of ``sync_queue``
    (default: the process's queue)."""
    on = sync_queue or default_queue()
    return WriterContext(get_settings(), states_reader(on.database.engine))


def process_writer() -> Writer:
    """This process's writer (``SYNCQUEUE_WRITER``), made once with :func:`writer_context`."""
    return get_writer(writer_context())
