"""One ``process_batch`` run: claim records, write them through the writer, record outcomes.

Knows the queue and the writer interface, nothing of Celery. No database transaction is open
while the writer does I/O: the claim is committed before the writer is called, and the
outcomes are recorded afterwards in one statement guarded by the claim's token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from syncqueue_tasks import metrics, queue
from syncqueue_tasks.errors import sanitize_error
from syncqueue_tasks.outcomes import Outcome
from syncqueue_tasks.records import RecordKey, RecordWrite, record_write
from syncqueue_tasks.writers.base import Writer

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
) -> BatchReport:
    """Drain the queue in batches of ``batch_size`` records until it is empty or
    ``time_budget`` seconds are spent.

    An exception of a type in ``interrupts`` (Celery's soft time limit) raised while writing
    is recorded as a retryable failure of the batch, then re-raised.
    """
    report = BatchReport()
    started = time.monotonic()
    while time.monotonic() - started < time_budget:
        batch = queue.claim_records(batch_size)
        if not batch.records:
            break
        report.batches += 1
        report.records += len(batch.records)
        report.claimed += sum(len(r.changes) for r in batch.records)
        writes = [record_write(r.key, r.base, r.changes, r.row_hint) for r in batch.records]
        try:
            outcomes = writer.write_records(writes)
        except Exception as exc:
            error = sanitize_error(exc)
            log.warning("writer failed on a batch of %d record(s): %s", len(writes), error)
            _record(batch, writes, {w.key: Outcome.retry(error) for w in writes}, report)
            if isinstance(exc, interrupts):
                raise
            continue
        _record(batch, writes, outcomes, report)
    report.seconds = time.monotonic() - started
    return report


def _record(
    batch: queue.RecordBatch,
    writes: Sequence[RecordWrite],
    outcomes: Mapping[RecordKey, Outcome],
    report: BatchReport,
) -> None:
    done = queue.finish_records(batch, outcomes, {w.key: w.state for w in writes})
    report.completed += done.completed
    report.retried += done.retried
    report.failed += done.failed
    report.not_owned += done.not_owned
    metrics.record_outcomes(completed=done.completed, retried=done.retried, failed=done.failed)
