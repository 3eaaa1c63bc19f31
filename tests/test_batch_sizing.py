"""batch.process gives a writer that asks for big batches (``batch_records``) as many records as
it wants in one call, from several claims, and records every claim's outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from dbutil import count_rows

from syncqueue_tasks.celery import batch
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.store import queue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


class Sized:
    """A writer that asks for ``batch_records`` records and hands back all but ``keep`` of
    each call (uncounted, at once), as the Sheets writer does with what exceeds its budget."""

    def __init__(self, batch_records: int, keep: int | None = None) -> None:
        self.batch_records = batch_records
        self.batch_changes = 100_000
        self.keep = keep
        self.calls: list[list[RecordWrite]] = []

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        self.calls.append(list(writes))
        cut = len(writes) if self.keep is None else self.keep
        back = Outcome.retry("did not fit", retry_after=0, count_attempt=False)
        return {w.key: Outcome.done() if i < cut else back for i, w in enumerate(writes)}


def _enqueue(records: int, per_record: int) -> None:
    queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": f"r{n}", "payload": {"k": k}}
        for k in range(per_record)
        for n in range(records)
    )


def test_a_writer_that_wants_more_gets_one_call_with_several_claims() -> None:
    _enqueue(records=2300, per_record=3)
    writer = Sized(batch_records=5000)
    report = batch.process(writer, batch_size=25, time_budget=60)
    assert [len(c) for c in writer.calls] == [2300]
    assert (report.batches, report.records, report.claimed, report.completed) == (
        1,
        2300,
        6900,
        6900,
    )
    assert count_rows("status = 'COMPLETED'") == 6900
    with_state = queue.get_record("Request", "r2299")
    assert with_state is not None and with_state.state.fields == {"k": 2}


def test_what_the_writer_hands_back_is_claimed_again_in_the_same_run() -> None:
    _enqueue(records=50, per_record=1)
    writer = Sized(batch_records=20, keep=15)
    report = batch.process(writer, batch_size=1, time_budget=60)
    assert report.completed == 50 and count_rows("status = 'COMPLETED'") == 50
    assert [len(c) for c in writer.calls][:3] == [20, 20, 20]
    assert count_rows("retries > 0") == 0  # handing back uses no attempt


def test_a_quiet_queue_still_makes_small_batches_at_once() -> None:
    _enqueue(records=3, per_record=1)
    writer = Sized(batch_records=5000)
    report = batch.process(writer, batch_size=25, time_budget=60)
    assert [len(c) for c in writer.calls] == [3] and report.completed == 3
