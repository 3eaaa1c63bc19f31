"""batch.process: each claimed record written once, its outcome recorded for all its changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import openpyxl
import pytest
from dbutil import assert_records_consistent, count_rows

from syncqueue_tasks.celery import batch
from syncqueue_tasks.core.records import RecordKey, RecordWrite
from syncqueue_tasks.store import queue
from syncqueue_tasks.writers.base import Outcome
from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


class Interrupted(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded."""


class Scripted:
    """A writer whose answer for each record is decided by its state's "do" field."""

    def __init__(self) -> None:
        self.seen: list[RecordWrite] = []

    def write_records(self, writes: Sequence[RecordWrite]) -> Mapping[RecordKey, Outcome]:
        self.seen += writes
        if any(w.state.fields.get("do") == "interrupt" for w in writes):
            raise Interrupted("time is up")
        answers = {
            "ok": Outcome.done(),
            "retry": Outcome.retry("busy", retry_after=300),
            "quota": Outcome.retry("429", retry_after=300, count_attempt=False),
            "fail": Outcome.fail("no such column"),
        }
        return {
            w.key: answers[w.state.fields["do"]] for w in writes if w.state.fields["do"] in answers
        }


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
    assert count_rows("status = 'PENDING' AND last_error LIKE 'the writer gave no outcome%'") == 1
    assert count_rows("status = 'PROCESSING'") == 0
    assert_records_consistent()


def test_an_interrupt_is_recorded_as_a_retryable_failure_then_re_raised() -> None:
    _enqueue("ok", "interrupt")
    with pytest.raises(Interrupted):
        batch.process(Scripted(), batch_size=10, time_budget=5, interrupts=(Interrupted,))
    assert count_rows("status = 'PENDING' AND last_error = 'Interrupted: time is up'") == 2
    assert count_rows("status = 'PROCESSING'") == 0
    assert_records_consistent()


def test_it_drains_batch_after_batch_until_the_queue_is_empty() -> None:
    ids = _enqueue(*["ok"] * 23)
    writer = Scripted()
    report = batch.process(writer, batch_size=5, time_budget=30)
    assert (report.batches, report.records, report.completed) == (5, 23, 23)
    assert [w.change_ids[0] for w in writer.seen] == ids  # oldest first


def test_a_zero_time_budget_claims_nothing() -> None:
    _enqueue("ok")
    assert batch.process(Scripted(), batch_size=5, time_budget=0).claimed == 0
    assert count_rows("status = 'PENDING'") == 1


def test_a_records_changes_are_written_once_folded_and_share_its_outcome() -> None:
    ids = queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": "same", "payload": p}
        for p in ({"do": "retry", "a": 1}, {"b": 2}, {"a": 3})
    )
    writer = Scripted()
    report = batch.process(writer, batch_size=10, time_budget=5)
    [write] = writer.seen
    assert write.change_ids == tuple(ids) and write.state.fields == {"do": "retry", "a": 3, "b": 2}
    assert (report.claimed, report.records, report.completed, report.retried) == (3, 1, 0, 3)
    assert count_rows("status = 'PENDING' AND retries = 1") == 3  # the record waits, as one
    assert_records_consistent()


# Findings 2 and 3 of issue 10, through the public path a worker takes (batch.process with
# the local workbook writer), so they state what the sheet ends with.


def _sheet(path: Path) -> dict[str, dict[str, object]]:
    rows = list(openpyxl.load_workbook(path)["Request"].iter_rows(values_only=True))
    return {
        str(r[0]): {k: v for k, v in zip(rows[0][1:], r[1:], strict=False) if v is not None}
        for r in rows[1:]
    }


def test_a_dead_letter_retried_after_cleanup_does_not_bring_back_an_old_value(
    tmp_path: Path,
) -> None:
    """Finding 2: A {"status": "open"} FAILED, B {"status": "closed"} COMPLETED later, cleanup,
    retry A: the sheet ended at "open" (the replay needed B's row, which cleanup deleted)."""
    path = tmp_path / "book.xlsx"
    [a] = queue.enqueue_many(
        [{"action": "UPDATE", "model": "Request", "record_id": "7", "payload": {"status": "open"}}]
    )
    refusing = LocalWorkbookWriter(path, update_missing="fail")  # the UPDATE is parked
    assert batch.process(refusing, batch_size=10, time_budget=5).failed == 1
    queue.enqueue("CREATE", "Request", "7", {"status": "closed"})
    assert batch.process(LocalWorkbookWriter(path), batch_size=10, time_budget=5).completed == 1
    assert queue.cleanup_completed(0) == 1
    assert queue.retry_failed([a]) == 1
    assert batch.process(LocalWorkbookWriter(path), batch_size=10, time_budget=5).completed == 1
    assert _sheet(path)["7"] == {"status": "closed"}


@pytest.mark.parametrize("per_batch", [1, 3])
def test_batch_boundaries_do_not_change_what_the_sheet_ends_with(
    tmp_path: Path, per_batch: int
) -> None:
    """Finding 3: CREATE, UPDATE, DELETE of one record in one batch left no row, in three a
    tombstone; DELETE then CREATE in one batch kept the deleted record's other cells."""
    path = tmp_path / "book.xlsx"
    writer = LocalWorkbookWriter(path)
    changes = [
        ("CREATE", "1", {"name": "bob", "ssn": "123-45-6789"}),
        ("UPDATE", "1", {"name": "bobby"}),
        ("DELETE", "1", {}),
        ("CREATE", "2", {"name": "eve", "ssn": "987"}),
        ("DELETE", "2", {}),
        ("CREATE", "2", {"name": "eve2"}),
    ]
    for start in range(0, len(changes), per_batch):
        queue.enqueue_many(
            {"action": a, "model": "Request", "record_id": r, "payload": p}
            for a, r, p in changes[start : start + per_batch]
        )
        batch.process(writer, batch_size=10, time_budget=5)
    assert _sheet(path) == {"1": {"_deleted": True}, "2": {"name": "eve2"}}
