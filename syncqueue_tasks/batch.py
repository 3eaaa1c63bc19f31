"""One ``process_batch`` run: claim, write through the writer, record outcomes; repeat.

Knows the queue and the writer interface, nothing of Celery. No database transaction is open
while the writer does I/O: ``dequeue`` commits the claim before the writer is called, and the
outcomes are recorded afterwards in two bulk statements.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import OperationalError

from syncqueue_tasks import metrics, queue
from syncqueue_tasks.errors import sanitize_error
from syncqueue_tasks.models import QueueItem, QueueStatus
from syncqueue_tasks.writers.base import Outcome, OutcomeKind, Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

# Recording outcomes survives a short database outage (a PostgreSQL restart): without it the
# items stay PROCESSING until reset_stuck and are written a second time.
_RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


@dataclass
class BatchReport:
    """What one run did."""

    batches: int = 0
    claimed: int = 0
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
    """Drain the queue in batches until it is empty or ``time_budget`` seconds are spent.

    An exception of a type in ``interrupts`` (Celery's soft time limit) raised while writing
    is recorded as a retryable failure of the batch, then re-raised.
    """
    report = BatchReport()
    started = time.monotonic()
    while time.monotonic() - started < time_budget:
        items = queue.dequeue(batch_size)
        if not items:
            break
        report.batches += 1
        report.claimed += len(items)
        outcomes = _write(writer, items, interrupts, report)
        if outcomes is not None:
            _record(items, outcomes, report)
    report.seconds = time.monotonic() - started
    return report


def _write(
    writer: Writer,
    items: Sequence[QueueItem],
    interrupts: tuple[type[BaseException], ...],
    report: BatchReport,
) -> Mapping[str, Outcome] | None:
    """The writer's outcomes; None when it raised (the batch is then already recorded)."""
    try:
        return writer.write(items)
    except Exception as exc:
        error = sanitize_error(exc)
        log.warning("writer failed on a batch of %d item(s): %s", len(items), error)
        _record(items, {item.id: Outcome.retry(error) for item in items}, report)
        if isinstance(exc, interrupts):
            raise
        return None


def _record(
    items: Sequence[QueueItem], outcomes: Mapping[str, Outcome], report: BatchReport
) -> None:
    done: list[QueueItem] = []
    failures: list[queue.Failure] = []
    for item, outcome in _in_record_order(items, outcomes):
        if outcome.kind is OutcomeKind.DONE:
            done.append(item)
        else:
            failures.append(
                queue.Failure(
                    item,
                    outcome.error or "unspecified writer failure",
                    retryable=outcome.kind is OutcomeKind.RETRY,
                    retry_after=outcome.retry_after,
                    count_attempt=outcome.count_attempt,
                )
            )
    completed = _with_retries(lambda: queue.mark_complete_many(done)) if done else 0
    statuses = _with_retries(lambda: queue.mark_failed_many(failures)) if failures else {}
    retried = sum(1 for s in statuses.values() if s is QueueStatus.PENDING)
    failed = len(statuses) - retried
    report.completed += completed
    report.retried += retried
    report.failed += failed
    report.not_owned += len(done) - completed + len(failures) - len(statuses)
    metrics.record_outcomes(completed=completed, retried=retried, failed=failed)


def _in_record_order(
    items: Sequence[QueueItem], outcomes: Mapping[str, Outcome]
) -> list[tuple[QueueItem, Outcome]]:
    """Each item's outcome, keeping per-record order: once a change of a record is to be
    retried, the later changes of that record in the batch are retried after it, never
    completed before it (without using up their attempts)."""
    waiting: set[tuple[str, str]] = set()
    result = []
    for item in items:  # oldest first
        key = (item.model, item.record_id)
        outcome = outcomes.get(item.id) or Outcome.retry("writer returned no outcome for the item")
        if key in waiting and outcome.kind is not OutcomeKind.FAIL:
            outcome = Outcome.retry(
                "waiting for an earlier change of this record", count_attempt=False
            )
        if outcome.kind is OutcomeKind.RETRY:
            waiting.add(key)
        result.append((item, outcome))
    return result


def _with_retries(operation: Callable[[], T]) -> T:
    for delay in _RECORD_RETRY_DELAYS:
        try:
            return operation()
        except OperationalError as exc:
            log.warning(
                "recording outcomes failed, retrying in %ss: %s", delay, sanitize_error(exc)
            )
            time.sleep(delay)
    return operation()
