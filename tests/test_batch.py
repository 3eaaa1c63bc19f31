"""batch.process: outcomes recorded for every claimed item, whatever the writer does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from dbutil import count_rows

from syncqueue_tasks import batch, queue
from syncqueue_tasks.models import QueueItem
from syncqueue_tasks.writers.base import Outcome

pytestmark = pytest.mark.usefixtures("db")


class Interrupted(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded."""


class Scripted:
    """A writer whose answer for each item is decided by its payload's "do" field."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def write(self, items: Sequence[QueueItem]) -> Mapping[str, Outcome]:
        self.seen += [i.id for i in items]
        if any(i.payload.get("do") == "interrupt" for i in items):
            raise Interrupted("time is up")
        answers = {
            "ok": Outcome.done(),
            "retry": Outcome.retry("busy", retry_after=300),
            "quota": Outcome.retry("429", retry_after=300, count_attempt=False),
            "fail": Outcome.fail("no such column"),
        }
        return {i.id: answers[i.payload["do"]] for i in items if i.payload["do"] in answers}


def _enqueue(*dos: str) -> list[str]:
    return queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": f"r{n}", "payload": {"do": do}}
        for n, do in enumerate(dos)
    )


def test_each_outcome_kind_is_recorded_and_missing_ones_are_retried() -> None:
    _enqueue("ok", "retry", "quota", "fail", "silent")
    report = batch.process(Scripted(), batch_size=10, time_budget=5)
    assert (report.claimed, report.completed, report.retried, report.failed) == (5, 1, 3, 1)
    assert count_rows("status = 'COMPLETED'") == 1
    assert count_rows("status = 'FAILED' AND last_error = 'no such column'") == 1
    assert count_rows("status = 'PENDING' AND retries = 1 AND last_error = 'busy'") == 1
    assert count_rows("status = 'PENDING' AND retries = 0 AND last_error = '429'") == 1
    assert count_rows("status = 'PENDING' AND last_error LIKE 'writer returned no outcome%'") == 1
    assert count_rows("status = 'PROCESSING'") == 0


def test_an_interrupt_is_recorded_as_a_retryable_failure_then_re_raised() -> None:
    _enqueue("ok", "interrupt")
    with pytest.raises(Interrupted):
        batch.process(Scripted(), batch_size=10, time_budget=5, interrupts=(Interrupted,))
    assert count_rows("status = 'PENDING' AND last_error = 'Interrupted: time is up'") == 2
    assert count_rows("status = 'PROCESSING'") == 0


def test_it_drains_batch_after_batch_until_the_queue_is_empty() -> None:
    ids = _enqueue(*["ok"] * 23)
    writer = Scripted()
    report = batch.process(writer, batch_size=5, time_budget=30)
    assert (report.batches, report.completed) == (5, 23)
    assert writer.seen == ids


def test_a_zero_time_budget_claims_nothing() -> None:
    _enqueue("ok")
    assert batch.process(Scripted(), batch_size=5, time_budget=0).claimed == 0
    assert count_rows("status = 'PENDING'") == 1


def test_a_records_later_changes_wait_when_an_earlier_one_is_retried() -> None:
    ids = queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": "same", "payload": {"do": do}}
        for do in ("retry", "ok", "ok")
    )
    report = batch.process(Scripted(), batch_size=10, time_budget=5)
    assert (report.claimed, report.completed, report.retried) == (3, 0, 3)
    assert count_rows("status = 'PENDING' AND retries = 1 AND id = :i", i=ids[0]) == 1
    assert count_rows("status = 'PENDING' AND retries = 0 AND id = ANY(:i)", i=ids[1:]) == 2
