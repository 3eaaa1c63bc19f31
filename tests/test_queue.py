"""The queue module's state machine, against the real PostgreSQL."""

from __future__ import annotations

import pytest
from dbutil import count_rows
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from syncqueue_tasks import queue
from syncqueue_tasks.db import get_engine
from syncqueue_tasks.models import QueueStatus, SyncAction, SyncQueue
from syncqueue_tasks.settings import get_settings

pytestmark = pytest.mark.usefixtures("db")


def _exec(sql: str, **params: object) -> None:
    with get_engine().begin() as conn:
        conn.execute(text(sql), params)


def test_enqueue_then_dequeue_round_trip() -> None:
    item_id = queue.enqueue(
        "CREATE", "Request", "r-1", {"name": "Ann", "n": [1, {"x": None}]}, max_retries=5
    )
    [item] = queue.dequeue(10)
    assert item.id == item_id
    assert item.action is SyncAction.CREATE
    assert (item.model, item.record_id, item.payload) == (
        "Request",
        "r-1",
        {"name": "Ann", "n": [1, {"x": None}]},
    )
    assert (item.retries, item.max_retries, item.sheet_row_index) == (0, 5, None)
    assert count_rows("status = 'PROCESSING' AND claimed_at IS NOT NULL") == 1
    assert queue.dequeue(10) == []
    assert queue.mark_complete(item) is True
    assert count_rows("status = 'COMPLETED' AND processed_at IS NOT NULL") == 1


def test_dequeue_returns_oldest_first_and_respects_batch_size() -> None:
    ids = queue.enqueue_many(
        {"action": "CREATE", "model": "Operator", "record_id": f"o{i}", "payload": {"i": i}}
        for i in range(30)
    )
    first = queue.dequeue(10)
    assert [i.id for i in first] == ids[:10]
    assert [i.id for i in queue.dequeue(25)] == ids[10:30]
    assert queue.mark_complete_many(first) == 10


def test_enqueue_many_is_all_or_nothing() -> None:
    good = {"action": "UPDATE", "model": "Revenue", "record_id": "1", "payload": {"a": 1}}
    bad = {"action": "UPDATE", "model": "Nope", "record_id": "2", "payload": {}}
    with pytest.raises(ValueError, match="model"):
        queue.enqueue_many([good, good, bad])
    assert count_rows() == 0


def test_outbox_row_commits_and_rolls_back_with_the_callers_transaction() -> None:
    with Session(get_engine()) as session:
        queue.enqueue("CREATE", "Request", "a", {"x": 1}, session=session)
        queue.enqueue_many(
            [{"action": "UPDATE", "model": "Request", "record_id": "a", "payload": {}}],
            session=session,
        )
        assert count_rows() == 0  # not visible before the caller commits
        session.rollback()
    assert count_rows() == 0
    with Session(get_engine()) as session, session.begin():
        queue.enqueue("CREATE", "Request", "b", {"x": 1}, session=session)
    assert count_rows("record_id = 'b'") == 1


def test_enqueue_with_the_same_id_twice_stores_one_row() -> None:
    item_id = queue.enqueue("CREATE", "Request", "a", {})
    assert queue.enqueue("CREATE", "Request", "a", {}, item_id=item_id) == item_id
    assert count_rows() == 1


def test_mark_failed_backs_off_then_fails_after_max_retries(monkeypatch) -> None:
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_BASE_SECONDS", "0")
    get_settings.cache_clear()
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, max_retries=3)
    statuses = []
    for _ in range(3):
        [item] = queue.dequeue()
        statuses.append(queue.mark_failed(item, RuntimeError("sheet said no")))
    assert statuses == [QueueStatus.PENDING, QueueStatus.PENDING, QueueStatus.FAILED]
    with get_engine().connect() as conn:
        row = conn.execute(text("SELECT retries, last_error, processed_at FROM sync_queue")).one()
    assert row.retries == 3
    assert row.last_error == "RuntimeError: sheet said no"
    assert row.processed_at is not None
    assert queue.dequeue() == []


def test_non_retryable_failure_is_failed_at_once() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [item] = queue.dequeue()
    assert queue.mark_failed(item, "bad column", retryable=False) is QueueStatus.FAILED
    assert count_rows("status = 'FAILED' AND retries = 1") == 1


def test_backoff_keeps_an_item_from_being_claimed_until_it_passes(monkeypatch) -> None:
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_BASE_SECONDS", "60")
    get_settings.cache_clear()
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [item] = queue.dequeue()
    assert queue.mark_failed(item, "503") is QueueStatus.PENDING
    # 60 s base with equal jitter: between 30 and 60 seconds from now.
    assert count_rows("available_at BETWEEN now() + interval '29 s' AND now() + interval '61 s'")
    assert queue.dequeue() == []
    _exec("UPDATE sync_queue SET available_at = now() - interval '1 second'")  # time passes
    [again] = queue.dequeue()
    assert again.id == item.id and again.retries == 1


def test_retry_after_and_uncounted_attempts() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, max_retries=1)
    [item] = queue.dequeue()
    status = queue.mark_failed(item, "429 quota", retry_after=0, count_attempt=False)
    assert status is QueueStatus.PENDING
    assert count_rows("retries = 0 AND available_at <= now()") == 1
    [item] = queue.dequeue()
    assert queue.mark_failed(item, "429 quota", retry_after=120, count_attempt=False) == "PENDING"
    assert count_rows("available_at > now() + interval '119 s'") == 1


def test_stale_owner_cannot_complete_or_fail_after_reset_stuck() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [first] = queue.dequeue()
    assert queue.reset_stuck(older_than_minutes=0) == 1
    [second] = queue.dequeue()
    assert second.id == first.id and second.claim_token != first.claim_token
    assert queue.mark_complete(first) is False
    assert queue.mark_complete_many([first]) == 0
    assert queue.mark_failed(first, "late") is None
    assert count_rows("status = 'PROCESSING' AND claim_token = :t", t=second.claim_token) == 1
    assert queue.mark_complete(queue.Claim(second.id, second.claim_token)) is True


def test_unknown_items_are_reported_not_changed() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [item] = queue.dequeue()
    ghost = queue.Claim("01ARZ3NDEKTSV4RRFFQ69G5FAV", item.claim_token)
    assert queue.mark_complete(ghost) is False
    assert queue.mark_failed(ghost, "x") is None
    assert count_rows("status = 'PROCESSING'") == 1


def test_reset_stuck_measures_time_since_the_claim_not_the_items_age() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    _exec("UPDATE sync_queue SET created_at = now() - interval '3 days'")
    queue.dequeue()
    assert queue.reset_stuck(older_than_minutes=10) == 0  # old item, fresh claim
    _exec("UPDATE sync_queue SET claimed_at = now() - interval '11 minutes'")
    assert queue.reset_stuck(older_than_minutes=10) == 1
    assert count_rows("status = 'PENDING' AND claim_token IS NULL") == 1


def test_cleanup_completed_deletes_exactly_old_completed_rows_in_chunks() -> None:
    ids = queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": str(i), "payload": {}}
        for i in range(60)
    )
    _exec(
        """UPDATE sync_queue SET status = 'COMPLETED', processed_at = now() - interval '8 days'
           WHERE id = ANY(:old)""",
        old=ids[:35],
    )
    _exec(
        """UPDATE sync_queue SET status = 'COMPLETED', processed_at = now() - interval '6 days'
           WHERE id = ANY(:recent)""",
        recent=ids[35:45],
    )
    _exec(
        """UPDATE sync_queue SET status = 'FAILED', processed_at = now() - interval '30 days'
           WHERE id = ANY(:failed)""",
        failed=ids[45:50],
    )
    deletes: list[int] = []

    def count_deletes(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    event.listen(get_engine(), "after_cursor_execute", count_deletes)
    try:
        assert queue.cleanup_completed(older_than_days=7, chunk_size=10) == 35
    finally:
        event.remove(get_engine(), "after_cursor_execute", count_deletes)
    assert deletes == [10, 10, 10, 5]
    assert count_rows("id = ANY(:old)", old=ids[:35]) == 0
    assert count_rows() == 25
    assert count_rows("status = 'FAILED'") == 5


def test_retry_list_and_discard_failed() -> None:
    for model, record_id in (("Request", "a"), ("Request", "b"), ("Operator", "a")):
        queue.enqueue("UPDATE", model, record_id, {"v": 1}, max_retries=0)
    for item in queue.dequeue(10):
        queue.mark_failed(item, "boom")
    failed = queue.list_failed()
    assert len(failed) == 3 and {f["last_error"] for f in failed} == {"boom"}
    assert queue.retry_failed(model="Operator") == 1
    assert count_rows("status = 'PENDING' AND retries = 0 AND model = 'Operator'") == 1
    request_ids = [f["id"] for f in queue.list_failed(model="Request")]
    assert queue.retry_failed([request_ids[0]]) == 1
    assert queue.discard_failed(model="Request") == 1
    assert queue.retry_failed() == 0
    assert count_rows() == 2


def test_stats_counts_each_status_and_oldest_pending_age() -> None:
    assert queue.get_queue_stats()["oldest_pending_age_seconds"] == 0.0
    queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": str(i), "payload": {}}
        for i in range(5)
    )
    _exec("UPDATE sync_queue SET created_at = now() - interval '90 seconds'")
    done, failing = queue.dequeue(2)
    queue.mark_complete(done)
    queue.mark_failed(failing, "x", retryable=False)
    queue.dequeue(1)
    stats = queue.get_queue_stats()
    assert {k: stats[k] for k in ("pending", "processing", "completed", "failed")} == {
        "pending": 2,
        "processing": 1,
        "completed": 1,
        "failed": 1,
    }
    assert 89 < stats["oldest_pending_age_seconds"] < 200
    assert stats["failed_last_24h"] == 1 and stats["completed_last_hour"] == 1


def test_orm_model_reads_rows_written_by_the_queue() -> None:
    item_id = queue.enqueue("DELETE", "Revenue", "9", {}, sheet_row_index=7)
    with Session(get_engine()) as session:
        row = session.get(SyncQueue, item_id)
        assert row is not None
        assert (row.action, row.status, row.sheet_row_index) == (
            SyncAction.DELETE,
            QueueStatus.PENDING,
            7,
        )


def test_a_claim_takes_a_records_queued_changes_together_and_in_order() -> None:
    a1, b1, a2, a3, b2 = (
        queue.enqueue("UPDATE", "Request", record, {"n": n})
        for n, record in enumerate(["a", "b", "a", "a", "b"])
    )
    first = queue.dequeue(4)
    assert [i.id for i in first] == [a1, b1, a2, a3]  # oldest first, within the batch size
    # "a" and "b" are in flight: b's remaining change waits for the claim that holds "b".
    assert queue.dequeue(10) == []
    queue.mark_complete_many(first)
    assert [i.id for i in queue.dequeue(10)] == [b2]


def test_a_record_in_flight_blocks_even_an_older_retried_change() -> None:
    old = queue.enqueue("UPDATE", "Request", "a", {"v": "old"}, max_retries=0)
    [item] = queue.dequeue()
    queue.mark_failed(item, "bad")  # FAILED: does not block later changes
    new = queue.enqueue("UPDATE", "Request", "a", {"v": "new"})
    [in_flight] = queue.dequeue()
    assert in_flight.id == new
    assert queue.retry_failed([old]) == 1  # older than the change in flight
    assert queue.dequeue() == []  # never two claims of one record at once
    queue.mark_complete(in_flight)
    retried, replayed = queue.dequeue()  # the old change, then the new one again after it
    assert retried.id == old and replayed.payload == {"v": "new"}


def _ids(n: int) -> list[str]:
    from syncqueue_tasks.ids import new_id

    return [new_id() for _ in range(n)]


def test_a_late_change_is_applied_before_the_later_ones_are_applied_again() -> None:
    first, second, third = _ids(3)  # made in this order, as by three .delay() calls
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    [claimed] = queue.dequeue()
    assert claimed.id == second and queue.mark_complete(claimed)  # written
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=third)  # normal, PENDING
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)  # its message was late
    batch = queue.dequeue(10)
    # The late change first, then the written one again (a copy), then the pending one.
    assert [i.payload["v"] for i in batch] == [1, 2, 3]
    assert batch[0].id == first and batch[2].id == third
    copy = batch[1]
    assert copy.id not in (first, second, third)
    assert count_rows("id = :c AND origin_id = :o", c=copy.id, o=second) == 1


def test_a_late_change_with_only_pending_later_changes_needs_no_replay() -> None:
    first, second = _ids(2)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)
    assert [i.payload["v"] for i in queue.dequeue(10)] == [1, 2]
    assert count_rows() == 2


def test_a_second_late_change_lands_between_the_first_and_the_replayed_ones() -> None:
    ids = _ids(4)
    queue.enqueue("UPDATE", "Request", "a", {"v": 4}, item_id=ids[3])
    queue.mark_complete_many(queue.dequeue())  # v=4 written
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=ids[0])  # late: 4 replayed
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=ids[1])  # late too
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=ids[2])  # and this one
    applied = [i.payload["v"] for i in queue.dequeue(20)]
    assert applied[:3] == [1, 2, 3] and applied[-1] == 4 and set(applied[3:]) == {4}


def test_a_redelivered_change_is_not_a_late_arrival() -> None:
    first, second = _ids(2)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.mark_complete_many(queue.dequeue(10))
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)  # the same message again
    assert count_rows() == 2 and queue.dequeue(10) == []


def test_a_late_change_after_a_replay_whose_applied_change_went_back_to_pending() -> None:
    # The later changes' rows are all PENDING again (the written-while-claimed one failed and
    # was retried), but their positions come from the first replay: the second late change
    # must still go before them.
    late1, late2, third, fourth = _ids(4)
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=third)
    queue.enqueue("UPDATE", "Request", "a", {"v": 4}, item_id=fourth)
    [in_flight] = queue.dequeue(1)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late1)  # replays 3 and 4
    assert queue.mark_failed(in_flight, "timeout", retry_after=0) == "PENDING"
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=late2)
    applied = [i.payload["v"] for i in queue.dequeue(20)]
    assert applied[:2] == [1, 2] and applied[-1] == 4 and set(applied[2:-1]) == {3}


def test_a_late_batch_with_two_changes_of_one_record_keeps_their_order() -> None:
    late1, late2, written = _ids(3)
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=written)
    queue.mark_complete_many(queue.dequeue())
    changes = [
        {"action": "UPDATE", "model": "Request", "record_id": "a", "payload": {"v": v}}
        for v in (1, 2)
    ]
    queue.enqueue_many(changes, item_ids=[late1, late2])
    assert [i.payload["v"] for i in queue.dequeue(20)] == [1, 2, 3]


@pytest.mark.parametrize("returned_by", ["retry", "reset_stuck"])
def test_a_change_claimed_during_a_replay_that_goes_back_to_pending_stays_before_later_ones(
    returned_by: str,
) -> None:
    late, second, third = _ids(3)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=third)
    [in_flight] = queue.dequeue(1)  # v=2, being written when the late change is stored
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late)
    if returned_by == "retry":
        assert queue.mark_failed(in_flight, "timeout", retry_after=0) == "PENDING"
    else:
        _exec(
            "UPDATE sync_queue SET claimed_at = now() - interval '1 hour' WHERE id = :i", i=second
        )
        assert queue.reset_stuck(older_than_minutes=1) == 1
    applied = [i.payload["v"] for i in queue.dequeue(20)]
    assert applied[0] == 1 and applied[-1] == 3 and set(applied[1:-1]) == {2}


def test_a_retried_dead_letter_is_applied_before_the_changes_written_after_it() -> None:
    parked, second, third = _ids(3)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=parked, max_retries=1)
    [item] = queue.dequeue()
    assert queue.mark_failed(item, "sheet rejected it") == "FAILED"
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.mark_complete_many(queue.dequeue())  # v=2 written while v=1 was parked
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=third)  # still PENDING
    assert queue.retry_failed([parked]) == 1
    # v=1, then v=2 again (a copy), then v=3: the record still ends at its last change.
    assert [i.payload["v"] for i in queue.dequeue(10)] == [1, 2, 3]


def test_a_replayed_copy_can_be_parked_and_retried_again_and_again() -> None:
    late, written = _ids(2)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=written, max_retries=1)
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late, max_retries=1)  # copies v=2
    for _ in range(6):  # each round parks everything, then retries it: positions nest deeper
        for item in queue.dequeue(10):
            queue.mark_failed(item, "down")
        assert queue.retry_failed() >= 1
    applied = [i.payload["v"] for i in queue.dequeue(50)]
    assert applied[0] == 1 and applied[-1] == 2


def test_a_retried_copy_goes_after_older_waiting_changes_and_takes_its_versions_along() -> None:
    late1, late2, parked, newest = _ids(4)
    queue.enqueue("UPDATE", "Request", "a", {"v": 3}, item_id=parked, max_retries=1)
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late1)  # copies v=3 after it
    first, copy = queue.dequeue(10)
    queue.mark_complete(first)
    assert queue.mark_failed(copy, "sheet rejected it") == "FAILED"  # v=3's copy is parked
    queue.enqueue("UPDATE", "Request", "a", {"v": 4}, item_id=newest)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=late2)  # v=3 copied again, v=4 moved
    assert queue.retry_failed([copy.id]) == 1
    applied = [i.payload["v"] for i in queue.dequeue(20)]
    last = {v: n for n, v in enumerate(applied)}
    assert applied[-1] == 4 and last[2] < last[3], applied


def test_a_record_waiting_out_a_backoff_gives_nothing_not_even_a_late_earlier_change() -> None:
    late, retried = _ids(2)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=retried)
    queue.enqueue("UPDATE", "Request", "b", {"v": 1})
    [first, other] = queue.dequeue()
    queue.mark_complete(other)
    assert queue.mark_failed(first, "429", retry_after=3600) == "PENDING"
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late)  # now the record's head
    queue.enqueue("UPDATE", "Request", "c", {"v": 1})
    assert [i.record_id for i in queue.dequeue(10)] == ["c"]  # "a" waits for its backoff
    _exec("UPDATE sync_queue SET available_at = now() WHERE id = :i", i=retried)
    assert [i.payload["v"] for i in queue.dequeue(10)] == [1, 2]
