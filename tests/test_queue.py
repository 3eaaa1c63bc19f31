"""The queue module's state machine, against the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from dbutil import assert_records_consistent, count_rows
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.items import QueueStatus, SyncAction
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import fold
from syncqueue_tasks.core.validation import validate_changes
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import queue, sql
from syncqueue_tasks.store.db import dispose_engine, get_database, get_engine
from syncqueue_tasks.store.models import SyncQueue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def _exec(sql: str, **params: object) -> None:
    with get_engine().begin() as conn:
        conn.execute(text(sql), params)


def _record_count(where: str) -> int:
    with get_engine().connect() as conn:
        return int(
            conn.execute(text(f"SELECT count(*) FROM sync_record WHERE {where}")).scalar_one()
        )


def _ids(n: int) -> list[str]:
    """``n`` change ids in the order ``.delay()`` calls would make them."""
    return [new_id() for _ in range(n)]


def _state(model: str, record_id: str) -> dict[str, object] | None:
    """A record's synced fields; None when it is deleted (or never written)."""
    view = queue.get_record(model, record_id)
    assert view is not None
    return dict(view.state.fields) if view.state.live else None


@pytest.fixture(autouse=True)
def _consistent() -> Iterator[None]:
    yield
    assert_records_consistent()


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
    assert _record_count("available_at BETWEEN now() + interval '29 s' AND now() + interval '61 s'")
    assert queue.dequeue() == []
    _exec("UPDATE sync_record SET available_at = now() - interval '1 second'")  # time passes
    [again] = queue.dequeue()
    assert again.id == item.id and again.retries == 1


def test_retry_after_and_uncounted_attempts() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, max_retries=1)
    [item] = queue.dequeue()
    status = queue.mark_failed(item, "429 quota", retry_after=0, count_attempt=False)
    assert status is QueueStatus.PENDING
    assert count_rows("retries = 0") == 1 and _record_count("available_at <= now()") == 1
    [item] = queue.dequeue()
    assert queue.mark_failed(item, "429 quota", retry_after=120, count_attempt=False) == "PENDING"
    assert _record_count("available_at > now() + interval '119 s'") == 1


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
    _exec("UPDATE sync_record SET claimed_at = now() - interval '11 minutes'")
    assert queue.reset_stuck(older_than_minutes=10) == 1
    assert count_rows("status = 'PENDING' AND claim_token IS NULL") == 1


def test_cleanup_completed_deletes_exactly_old_completed_rows_in_chunks() -> None:
    ids = queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": str(i), "payload": {}}
        for i in range(60)
    )
    claimed = {i.id: i for i in queue.dequeue(60)}
    queue.mark_complete_many(claimed[i] for i in ids[:45])
    queue.mark_failed_many(queue.Failure(claimed[i], "x", retryable=False) for i in ids[45:50])
    queue.mark_failed_many(queue.Failure(claimed[i], "x", retry_after=0) for i in ids[50:])
    _exec(
        "UPDATE sync_queue SET processed_at = now() - interval '8 days' WHERE id = ANY(:o)",
        o=ids[:35],
    )
    _exec(
        "UPDATE sync_queue SET processed_at = now() - interval '6 days' WHERE id = ANY(:r)",
        r=ids[35:45],
    )
    _exec(
        "UPDATE sync_queue SET processed_at = now() - interval '30 days' WHERE id = ANY(:f)",
        f=ids[45:50],
    )
    deletes: list[int] = []

    def count_deletes(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    engine = get_database().autocommit  # the queue's one-statement operations
    event.listen(engine, "after_cursor_execute", count_deletes)
    try:
        assert queue.cleanup_completed(older_than_days=7, chunk_size=10) == 35
    finally:
        event.remove(engine, "after_cursor_execute", count_deletes)
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
    _exec("UPDATE sync_record SET available_at = now() - interval '90 seconds'")
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
    assert stats["records_in_backoff"] == 0


def test_stats_failed_items_and_record_changes_have_their_documented_keys() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, max_retries=0)
    [item] = queue.dequeue(1)
    queue.mark_failed(item, "boom")
    stats = queue.get_queue_stats()
    assert (
        set(stats)
        == set(queue.QueueStats.__required_keys__)
        == {
            "pending",
            "processing",
            "completed",
            "failed",
            "oldest_pending_age_seconds",
            "records_in_backoff",
            "failed_last_24h",
            "completed_last_hour",
        }
    )
    assert isinstance(stats["oldest_pending_age_seconds"], float)
    assert all(type(v) is int for k, v in stats.items() if k != "oldest_pending_age_seconds")
    [failed] = queue.list_failed()
    assert set(failed) == set(queue.FailedItem.__required_keys__)
    assert (failed["id"], failed["action"], failed["model"], failed["record_id"]) == (
        item.id,
        "UPDATE",
        "Request",
        "a",
    )
    assert (failed["retries"], failed["last_error"]) == (1, "boom")
    assert isinstance(failed["processed_at"], datetime)
    view = queue.get_record("Request", "a")
    assert view is not None
    [change] = view.changes
    assert set(change) == set(queue.RecordChange.__required_keys__)
    assert (change["status"], change["payload"], change["max_retries"]) == ("FAILED", {"v": 1}, 0)
    assert isinstance(change["created_at"], datetime) and change["claimed_at"] is None


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


def test_a_record_is_in_one_claim_at_a_time_and_its_new_changes_wait_for_the_next() -> None:
    first = queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [claimed] = queue.dequeue()
    second = queue.enqueue("UPDATE", "Request", "a", {"v": 2})  # arrives while "a" is claimed
    assert queue.dequeue(10) == []  # never two claims of one record
    assert claimed.id == first and queue.mark_complete(claimed)
    [then] = queue.dequeue(10)
    assert then.id == second


def test_a_claim_takes_at_most_max_changes_and_the_rest_waits_for_the_next_claim() -> None:
    ids = queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": "hot", "payload": {"n": n}}
        for n in range(7)
    )
    batch = queue.claim_records(10, max_changes=3)
    assert [c.id for r in batch.records for c in r.changes] == ids[:3]
    assert queue.claim_records(10).records == ()  # the rest waits: the record is claimed
    queue.finish_records(
        batch,
        {r.key: Outcome.done() for r in batch.records},
        {r.key: r.base for r in batch.records},
    )
    assert [c.id for c in queue.claim_records(10).items] == ids[3:]


def test_completing_a_change_folds_it_into_the_records_synced_state() -> None:
    queue.enqueue("CREATE", "Request", "a", {"name": "Ann", "n": 1})
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("UPDATE", "Request", "a", {"n": 2})
    queue.mark_complete_many(queue.dequeue())
    view = queue.get_record("Request", "a")
    assert view is not None and view.state.fields == {"name": "Ann", "n": 2}
    assert [c["status"] for c in view.changes] == ["COMPLETED", "COMPLETED"]
    assert view.pending == 0 and view.claimed_at is None and view.synced_at is not None
    queue.enqueue("DELETE", "Request", "a", {})
    queue.mark_complete_many(queue.dequeue())
    assert _state("Request", "a") is None


def test_a_later_change_completed_before_an_earlier_one_is_retried_still_wins() -> None:
    # Changes are applied by version: the order of outcomes does not matter.
    queue.enqueue("UPDATE", "Request", "a", {"v": "older", "w": 1})
    queue.enqueue("UPDATE", "Request", "a", {"v": "newer"})
    older, newer = queue.dequeue(10)
    assert queue.mark_complete(newer)
    assert queue.mark_failed(older, "flaky", retry_after=0) is QueueStatus.PENDING
    [again] = queue.dequeue(10)
    assert again.id == older.id and queue.mark_complete(again)
    assert _state("Request", "a") == {"v": "newer", "w": 1}


def test_a_late_change_sets_only_the_fields_no_newer_change_set() -> None:
    first, second = _ids(2)  # made in this order, as by two .delay() calls
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("UPDATE", "Request", "a", {"v": 1, "note": "late"}, item_id=first)
    queue.mark_complete_many(queue.dequeue())
    assert _state("Request", "a") == {"v": 2, "note": "late"}
    assert count_rows() == 2  # no copies, no replays


def test_a_late_change_older_than_the_last_delete_sets_nothing() -> None:
    create, delete = _ids(2)
    queue.enqueue("DELETE", "Request", "a", {}, item_id=delete)
    queue.mark_complete_many(queue.dequeue())
    queue.enqueue("CREATE", "Request", "a", {"v": 1}, item_id=create)  # late, before the DELETE
    queue.mark_complete_many(queue.dequeue())
    assert _state("Request", "a") is None


def test_a_redelivered_change_is_stored_once() -> None:
    first, second = _ids(2)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=second)
    queue.mark_complete_many(queue.dequeue(10))
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=first)  # the same message again
    assert count_rows() == 2 and queue.dequeue(10) == []
    assert _state("Request", "a") == {"v": 2}


def test_retrying_a_dead_letter_after_cleanup_does_not_bring_back_an_old_value() -> None:
    """Finding 2 of issue 10: A FAILED, B COMPLETED later, cleanup, retry A -> still B."""
    a = queue.enqueue("UPDATE", "Request", "r", {"status": "open"}, max_retries=0)
    [claimed_a] = queue.dequeue()
    assert queue.mark_failed(claimed_a, "sheet refused") is QueueStatus.FAILED
    queue.enqueue("UPDATE", "Request", "r", {"status": "closed"})
    queue.mark_complete_many(queue.dequeue())
    assert queue.cleanup_completed(0) == 1  # B's row is gone; the record keeps its state
    assert queue.retry_failed([a]) == 1
    [retried] = queue.dequeue()
    assert retried.id == a and queue.mark_complete(retried)
    assert _state("Request", "r") == {"status": "closed"}


def test_a_retried_dead_letter_fills_in_what_no_newer_change_set() -> None:
    old = queue.enqueue("UPDATE", "Request", "a", {"v": "old", "extra": 1}, max_retries=0)
    [item] = queue.dequeue()
    queue.mark_failed(item, "bad")  # FAILED: does not hold the record
    queue.enqueue("UPDATE", "Request", "a", {"v": "new"})
    [in_flight] = queue.dequeue()
    assert queue.retry_failed([old]) == 1
    assert queue.dequeue() == []  # the record is claimed: the retried change waits
    queue.mark_complete(in_flight)
    [retried] = queue.dequeue()
    assert retried.id == old and queue.mark_complete(retried)
    assert _state("Request", "a") == {"v": "new", "extra": 1}


def test_a_record_waiting_out_a_backoff_gives_nothing_until_it_ends() -> None:
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [item] = queue.dequeue()
    queue.mark_failed(item, "503", retry_after=300)
    queue.enqueue("UPDATE", "Request", "a", {"v": 2})  # waits with its record
    queue.enqueue("UPDATE", "Request", "b", {"v": 1})
    assert [i.record_id for i in queue.dequeue(10)] == ["b"]
    _exec("UPDATE sync_record SET available_at = now() WHERE record_id = 'a'")
    assert [i.payload["v"] for i in queue.dequeue(10)] == [1, 2]


def test_finish_records_records_one_outcome_per_record_for_all_its_changes() -> None:
    queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": r, "payload": {"n": n}}
        for n, r in enumerate(["a", "b", "a", "c"])
    )
    batch = queue.claim_records(10)
    keys = [r.key for r in batch.records]
    assert [k.record_id for k in keys] == ["a", "b", "c"]
    outcomes = {
        keys[0]: Outcome.done(),
        keys[1]: Outcome.retry("503", retry_after=60),
        keys[2]: Outcome.fail("bad column"),
    }
    states = {r.key: fold(r.base, r.changes) for r in batch.records}
    report = queue.finish_records(batch, outcomes, states)
    assert (report.completed, report.retried, report.failed, report.not_owned) == (2, 1, 1, 0)
    assert _state("Request", "a") == {"n": 2}
    assert _state("Request", "b") is None and _state("Request", "c") is None
    assert _record_count("record_id = 'b' AND available_at > now() + interval '59 s'") == 1
    again = queue.finish_records(batch, outcomes, states)  # a stale second report
    assert again.not_owned == 4


def test_get_record_is_none_for_a_record_the_queue_never_had() -> None:
    assert queue.get_record("Request", "never") is None


def test_changes_deleted_by_hand_stop_counting_and_their_claims_end() -> None:
    queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": r, "payload": {"n": n}}
        for n, r in enumerate(["held", "held", "held"])
    )
    batch = queue.claim_records(10)  # "held": 3 changes in flight
    waiting = queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": "w", "payload": {"n": n}}
        for n in range(3)
    )
    [first_held, *rest_held] = [c.id for c in batch.items]
    # An operator's own DELETEs (not discard or cleanup): the counts follow.
    _exec("DELETE FROM sync_queue WHERE id = ANY(:ids)", ids=[waiting[0], first_held])
    assert_records_consistent()
    assert _record_count("record_id = 'w' AND pending = 2") == 1
    assert _record_count("record_id = 'held' AND in_flight = 2 AND claim_token IS NOT NULL") == 1
    _exec("DELETE FROM sync_queue WHERE id = ANY(:ids)", ids=[*waiting[1:], *rest_held])
    assert _record_count("pending = 0 AND claim_token IS NULL") == 2  # the claim ended
    assert queue.claim_records(10).records == ()
    outcomes = {r.key: Outcome.done() for r in batch.records}
    states = {r.key: fold(r.base, r.changes) for r in batch.records}
    report = queue.finish_records(batch, outcomes, states)
    assert (report.completed, report.not_owned) == (0, 3)  # the worker's late outcome: nothing


def test_truncating_the_queue_leaves_no_record_waiting_for_changes_that_are_gone() -> None:
    queue.enqueue_many(
        {"action": "UPDATE", "model": "Request", "record_id": f"old{n}", "payload": {"n": n}}
        for n in range(40)
    )
    queue.claim_records(5)  # five records claimed when the table is emptied
    _exec("TRUNCATE sync_queue")
    assert_records_consistent()
    # New changes are claimed at once, not stuck behind 40 records waiting for nothing.
    fresh = queue.enqueue("UPDATE", "Request", "new", {"n": 1})
    assert [c.id for c in queue.claim_records(25).items] == [fresh]


def test_a_store_that_fails_raises_sqlalchemys_error_without_the_payload() -> None:
    """The store goes through psycopg directly: its errors are still SQLAlchemy's, and carry
    no parameter (payload) value."""
    from sqlalchemy.exc import OperationalError

    from syncqueue_tasks.core.errors import sanitize_error

    with Session(get_engine()) as outbox:
        queue.enqueue("UPDATE", "Request", "held", {"n": 1}, session=outbox)  # holds the record
        with pytest.raises(OperationalError) as info:
            queue.enqueue("UPDATE", "Request", "held", {"n": "s3cr3t-value"}, fail_fast=True)
        outbox.rollback()
    assert "timeout" in str(info.value.orig)  # the lock wait, or the statement, timed out
    assert "s3cr3t-value" not in str(info.value) and "s3cr3t-value" not in repr(info.value)
    assert "s3cr3t-value" not in sanitize_error(info.value)
    assert count_rows() == 0


def test_a_store_that_cannot_connect_raises_sqlalchemys_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No server: the store's error is SQLAlchemy's ``OperationalError`` (what the CLI and the
    callers catch), not the driver's."""
    from sqlalchemy.exc import OperationalError

    from syncqueue_tasks.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    dispose_engine()
    try:
        with pytest.raises(OperationalError):
            queue.enqueue("UPDATE", "Request", "r", {"n": 1})
        with pytest.raises(OperationalError):
            queue.claim_records(5)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        dispose_engine()
    assert count_rows() == 0


def test_stores_after_the_servers_connections_died_reconnect() -> None:
    """A dead pooled connection fails one plain store (an error saying the connection was
    invalidated), then the pool reconnects; a fail-fast store retries once by itself."""
    import psycopg
    from dbutil import ADMIN_URL
    from sqlalchemy.exc import DBAPIError

    def kill_connections() -> None:  # the queue's, from outside its pools
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'syncqueue'",
                (get_database().autocommit.url.database,),
            )

    queue.enqueue("UPDATE", "Request", "r", {"n": 0}, fail_fast=True)
    queue.enqueue("UPDATE", "Request", "r", {"n": 1})
    kill_connections()
    with pytest.raises(DBAPIError) as info:
        queue.enqueue("UPDATE", "Request", "r", {"n": "lost"})
    assert info.value.connection_invalidated
    queue.enqueue("UPDATE", "Request", "r", {"n": 2})
    kill_connections()
    queue.enqueue("UPDATE", "Request", "r", {"n": 3}, fail_fast=True)
    dispose_engine()  # the other pools' connections died too
    assert count_rows() == 4


def test_storing_changes_does_what_the_database_functions_do() -> None:
    """``sql.ENQUEUE`` writes the rules of ``syncqueue_enqueue`` (which the trigger capture
    calls) inline: both leave the same changes and records, from the same state."""
    through_function = text("""
        SELECT syncqueue_enqueue(array_agg(c.id), array_agg(c.action), array_agg(c.model),
                                 array_agg(c.record_id), array_agg(c.row_hint),
                                 array_agg(c.payload), array_agg(c.max_retries))
        FROM jsonb_to_recordset(CAST(:changes AS jsonb))
            AS c(id text, action sync_action, model text, record_id text, row_hint integer,
                 payload jsonb, max_retries integer)
    """)
    first = queue.enqueue_many(
        [
            {"action": "CREATE", "model": "Request", "record_id": r, "payload": {"n": 0}}
            for r in ("a", "b", "b", "d")
        ]
    )
    claimed = {i.id: i for i in queue.dequeue(10)}
    queue.mark_complete_many([claimed[first[0]], claimed[first[3]]])  # a, d: nothing waits
    queue.mark_failed_many([queue.Failure(claimed[i], "x") for i in first[1:3]])  # b: backoff
    later = [
        {"action": "UPDATE", "model": "Request", "record_id": r, "payload": {"n": n}}
        for n, r in enumerate(["b", "a", "a", "b", "c", "c", "d"], start=1)
    ]
    later[-1] |= {"sheet_row_index": 7, "max_retries": 5}
    changes = validate_changes(later, get_settings().limits)
    ids = [first[1], *_ids(len(later) - 1)]  # the first one is stored already

    def stored(statement: Any) -> tuple[int, list[Any], list[Any]]:
        with Session(get_engine()) as session:
            params = {"changes": queue.changes_json(changes, ids)}
            count = session.execute(statement, params).scalar_one()
            rows = session.execute(
                text(
                    "SELECT id, action, model, record_id, sheet_row_index, payload, status,"
                    " retries, max_retries FROM sync_queue ORDER BY id"
                )
            ).all()
            records = session.execute(
                text(
                    "SELECT model, record_id, pending, waiting_id, in_flight, claim_token,"
                    " CASE WHEN available_at = now() THEN 'now' ELSE available_at::text END"
                    " FROM sync_record ORDER BY model, record_id"
                )
            ).all()
            session.rollback()
        return int(count), list(rows), list(records)

    inline, function = stored(sql.ENQUEUE), stored(through_function)
    assert inline == function
    assert inline[0] == len(later) - 1
