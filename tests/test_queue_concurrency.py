"""Concurrency claims, proven against the real PostgreSQL: deterministic interleavings (one party
paused by a lock or an open transaction held from a second connection) and several OS
processes. Findings 1, 4 and 5 of issue 10 each have a test here that fails on the queue that
kept order by moving rows under hashed advisory locks.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dbutil import assert_records_consistent, count_rows
from sqlalchemy import text
from sqlalchemy.orm import Session

from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.outcomes import Outcome
from syncqueue_tasks.core.records import fold
from syncqueue_tasks.store import queue, sql
from syncqueue_tasks.store.db import get_engine

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]

SPAWN = mp.get_context("spawn")


@pytest.fixture(autouse=True)
def _consistent() -> Iterator[None]:
    yield
    assert_records_consistent()


def _state(record_id: str, model: str = "Request") -> dict[str, Any] | None:
    view = queue.get_record(model, record_id)
    assert view is not None
    return dict(view.state.fields) if view.state.live else None


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` in a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:  # the test inspects it
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _waiting_on_a_lock(query_fragment: str) -> bool:
    with get_engine().connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE :q"
                ),
                {"q": f"%{query_fragment}%"},
            ).scalar_one()
        )


# --------------------------------------------------------------------------- one record, one claim


def test_a_late_change_stored_between_two_claims_does_not_put_its_record_in_two_claims() -> None:
    """Finding 1: a late change (an older id, as a delayed broker message carries) stored while
    two claims run: one claim took the late change, the other kept the later ones, and the
    record was in two claims at once."""
    late, later = new_id(), new_id()
    queue.enqueue("UPDATE", "Request", "a", {"v": "later"}, item_id=later)
    first = queue.dequeue(10)
    queue.enqueue("UPDATE", "Request", "a", {"v": "late"}, item_id=late)  # arrives late
    assert queue.dequeue(10) == []  # the record is held: no second claim, no second token
    assert queue.mark_complete_many(first) == 1
    [second] = queue.dequeue(10)
    assert second.id == late and queue.mark_complete(second)
    assert _state("a") == {"v": "later"}  # the newer value stays, whatever arrived last


def test_a_late_change_stored_during_a_claim_waits_and_a_second_claim_gets_nothing() -> None:
    """Finding 1, mid-claim: claim 1 is paused inside its statement, holding the record (a lock
    on one of its change rows, held from a second connection, stops it after it picked the
    record). A late change stored meanwhile waits for the record; a second claim skips it."""
    later = queue.enqueue("UPDATE", "Request", "a", {"v": "later"})
    late = new_id()
    with get_engine().connect() as holder:
        holder.begin()
        holder.execute(text("SELECT 1 FROM sync_queue WHERE id = :i FOR UPDATE"), {"i": later})
        claim1, got1 = _in_thread(lambda: queue.claim_records(10))
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock("WITH picked AS") and time.monotonic() < deadline:
            time.sleep(0.01)
        store, stored = _in_thread(
            lambda: queue.enqueue("UPDATE", "Request", "a", {"v": "late"}, item_id=late)
        )
        store.join(0.5)
        assert store.is_alive()  # the late change waits for the record claim 1 holds
        assert queue.claim_records(10).records == ()  # claim 2: nothing, at once
        holder.rollback()
    claim1.join(10)
    store.join(10)
    [batch] = got1
    assert [c.id for c in batch.items] == [later] and stored == [late]
    assert queue.claim_records(10).records == ()  # still held by claim 1
    [record] = batch.records
    queue.finish_records(
        batch, {record.key: Outcome.done()}, {record.key: fold(record.base, record.changes)}
    )
    assert [c.id for c in queue.claim_records(10).items] == [late]
    queue.reset_stuck(0)  # hand it back, for the consistency check


def test_a_claim_skips_a_record_while_a_change_of_it_is_being_stored() -> None:
    """A store holds its record's row until it commits: a claim running meanwhile skips the
    record (SKIP LOCKED) instead of taking its older changes without the new one, or waiting."""
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    queue.enqueue("UPDATE", "Request", "b", {"v": 1})
    with Session(get_engine()) as outbox:  # an application's open transaction
        queue.enqueue("UPDATE", "Request", "a", {"v": 2}, session=outbox)
        during = queue.claim_records(10)  # returns at once, without "a"
        assert [r.key.record_id for r in during.records] == ["b"]
        outbox.commit()
    after = queue.claim_records(10)
    assert [(r.key.record_id, len(r.changes)) for r in after.records] == [("a", 2)]


def test_an_enqueue_held_open_across_a_completion_is_not_stranded() -> None:
    """The trap of a "has work" mark: a completion re-checking for PENDING changes under READ
    COMMITTED misses one an open transaction commits later. Here the count is row arithmetic
    on the locked record row: the completion waits for the store's lock (alone: it holds no
    other), then adds to what the store left."""
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [claimed] = queue.dequeue()
    with Session(get_engine()) as outbox:
        queue.enqueue("UPDATE", "Request", "a", {"v": 2}, session=outbox)  # holds the record
        thread, result = _in_thread(lambda: queue.mark_complete(claimed))
        thread.join(1.0)
        assert thread.is_alive() and not result  # waiting for the store's transaction
        assert _waiting_on_a_lock("FOR UPDATE")
        outbox.commit()
    thread.join(10)
    assert result == [True]
    [then] = queue.dequeue()  # the change stored meanwhile is claimable
    assert then.payload == {"v": 2} and queue.mark_complete(then)
    assert _state("a") == {"v": 2}


def test_a_store_committing_after_a_completion_counts_on_top_of_it() -> None:
    """The other order: the completion holds the record row; the store waits, then adds."""
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [claimed] = queue.dequeue()
    with get_engine().connect() as holder:  # pause the completion's commit with the row held
        holder.begin()
        holder.execute(text("SELECT 1 FROM sync_record WHERE record_id = 'a' FOR UPDATE"))
        thread, _result = _in_thread(lambda: queue.enqueue("UPDATE", "Request", "a", {"v": 2}))
        thread.join(0.5)
        assert thread.is_alive()  # the store waits for the row
        holder.commit()
    thread.join(10)
    assert queue.mark_complete(claimed)
    [then] = queue.dequeue()
    assert then.payload == {"v": 2}


# --------------------------------------------------------------------------- finding 5: no leaks


def test_an_open_outbox_transaction_does_not_stall_the_outcomes_of_other_records() -> None:
    """Finding 5: an open outbox transaction for Request 42 stalled mark_complete_many of
    Request 743 (same advisory-lock bucket) for seconds."""
    queue.enqueue("UPDATE", "Request", "743", {"v": 1})
    [other] = queue.dequeue()
    with Session(get_engine()) as outbox:
        queue.enqueue("UPDATE", "Request", "42", {"v": 1}, session=outbox)
        thread, result = _in_thread(lambda: queue.mark_complete_many([other]))
        thread.join(10)
        assert result == [1]  # done while the outbox transaction is still open
        outbox.rollback()


def test_two_enqueues_in_one_outbox_transaction_do_not_deadlock_with_a_workers_outcomes() -> None:
    """Finding 5: two enqueues in one outbox transaction deadlocked against a worker's marks.
    The worker records what it can lock at once (SKIP LOCKED) and then waits for one record
    at a time, holding nothing else, so it cannot be part of a cycle."""
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    queue.enqueue("UPDATE", "Request", "b", {"v": 1})
    claimed = queue.dequeue(10)
    assert {c.record_id for c in claimed} == {"a", "b"}
    with Session(get_engine()) as outbox:
        queue.enqueue("UPDATE", "Request", "b", {"v": 2}, session=outbox)  # holds "b"
        thread, result = _in_thread(lambda: queue.mark_complete_many(claimed))
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock("FOR UPDATE") and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker recorded "a" and now waits for "b" alone
        queue.enqueue("UPDATE", "Request", "a", {"v": 2}, session=outbox)  # needs "a"
        outbox.commit()
    thread.join(10)
    assert result == [2]
    assert {c.payload["v"] for c in queue.dequeue(10)} == {2}


# --------------------------------------------------------------------------- finding 4: hot record


def _claim_buffers() -> int:
    """Shared buffers (hit + read) one claim touches, from EXPLAIN (ANALYZE, BUFFERS)."""
    with get_engine().connect() as conn:
        conn.begin()
        plan = conn.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + str(sql.CLAIM.text)),
            {
                "max_records": 25,
                "max_changes": 1000,
                "token": "00000000-0000-0000-0000-000000000000",
            },
        ).scalar_one()
        conn.rollback()  # the claim's effects go away; only its cost was wanted
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


def test_a_claims_cost_does_not_follow_a_hot_records_backlog() -> None:
    """Finding 4: with one record's change in flight and 200,000 PENDING behind it, each claim
    took 0.7 s: it walked the hot record's backlog. Here a record's backlog is one entry of the
    records index; the claim touches about as many pages as on a queue without it."""
    for start in range(0, 50):
        queue.enqueue("UPDATE", "Request", f"r{start}", {"v": 1})
    with get_engine().begin() as conn:
        conn.execute(text("ANALYZE sync_queue; ANALYZE sync_record"))
    baseline = _claim_buffers()
    hot = [
        {"action": "UPDATE", "model": "Revenue", "record_id": "hot", "payload": {"n": n}}
        for n in range(20_000)
    ]
    for start in range(0, len(hot), 1000):
        queue.enqueue_many(hot[start : start + 1000])
    with get_engine().begin() as conn:  # the hot record is the oldest: put it first
        conn.execute(
            text(
                "UPDATE sync_record SET available_at = now() - interval '1 hour' "
                "WHERE record_id = 'hot'"
            )
        )
    in_flight = queue.claim_records(1, max_changes=10)  # one of its changes is being written
    assert [r.key.record_id for r in in_flight.records] == ["hot"]
    with get_engine().begin() as conn:
        conn.execute(text("ANALYZE sync_queue; ANALYZE sync_record"))
    behind = _claim_buffers()
    assert behind <= 2 * baseline + 50, (behind, baseline)
    queue.finish_records(in_flight, {}, {})  # no outcome: retried, for the consistency check


# --------------------------------------------------------------------------- several processes


def _drain(batch_size: int, results: mp.Queue, start: mp.Event) -> None:  # type: ignore[type-arg]
    """Claim and complete until the queue is empty; report every claimed id."""
    start.wait()
    claimed: list[str] = []
    idle = 0
    while idle < 3:
        items = queue.dequeue(batch_size)
        if not items:
            idle += 1
            time.sleep(0.02)
            continue
        idle = 0
        claimed.extend(i.id for i in items)
        queue.mark_complete_many(items)
    results.put(claimed)


def _run_workers(target, args: tuple, workers: int) -> list:  # type: ignore[no-untyped-def,type-arg]
    results = SPAWN.Queue()
    start = SPAWN.Event()
    procs = [SPAWN.Process(target=target, args=(*args, results, start)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        start.set()
        out = [results.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def test_four_processes_claim_10000_items_exactly_once() -> None:
    ids: list[str] = []
    for chunk in range(10):
        ids += queue.enqueue_many(
            {
                "action": "CREATE",
                "model": "Request",
                "record_id": f"r{chunk * 1000 + i}",
                "payload": {"i": i},
            }
            for i in range(1000)
        )
    per_worker = _run_workers(_drain, (50,), workers=4)
    claimed = [item_id for worker in per_worker for item_id in worker]
    assert len(claimed) == 10_000
    assert len(set(claimed)) == 10_000  # 0 duplicates
    assert set(claimed) == set(ids)  # 0 lost
    assert all(worker for worker in per_worker)  # every process took part
    assert count_rows("status = 'COMPLETED'") == 10_000


def _producer(
    changes: list[tuple[str, str, int]],
    results: mp.Queue,  # type: ignore[type-arg]
    start: mp.Event,  # type: ignore[type-arg]
    done: mp.Semaphore,  # type: ignore[type-arg]
) -> None:
    """Store (id, record, seq) changes in the given (shuffled) order, one or three at a time."""
    start.wait()
    rng = random.Random(len(changes))
    while changes:
        size = rng.choice((1, 1, 3))
        chunk, changes = changes[:size], changes[size:]
        queue.enqueue_many(
            [
                {
                    "action": "UPDATE",
                    "model": "Revenue",
                    "record_id": r,
                    "payload": {"seq": n, f"f{n % 3}": n},
                    "max_retries": 100,
                }
                for _, r, n in chunk
            ],
            item_ids=[item_id for item_id, _, _ in chunk],
        )
    done.release()
    results.put([])


def _worker(
    results: mp.Queue,  # type: ignore[type-arg]
    start: mp.Event,  # type: ignore[type-arg]
    done: mp.Semaphore,  # type: ignore[type-arg]
) -> None:
    """Claim records while producers run; log each claim's span per record. One batch in
    five fails (retried at once), half of those after writing (the lost response)."""
    start.wait()
    rng = random.Random()
    spans: list[tuple[str, float, float]] = []
    while True:
        batch = queue.claim_records(rng.randint(1, 6), max_changes=rng.randint(1, 12))
        if not batch.records:
            stats = queue.get_queue_stats()
            if done.get_value() == 2 and stats["pending"] + stats["processing"] == 0:  # type: ignore[attr-defined]
                break
            time.sleep(0.01)
            continue
        began = time.monotonic()
        time.sleep(rng.random() * 0.003)  # "writing"
        ended = time.monotonic()
        spans += [(r.key.record_id, began, ended) for r in batch.records]
        fail = rng.random() < 0.2
        outcome = Outcome.retry("flaky", retry_after=0) if fail else Outcome.done()
        queue.finish_records(
            batch,
            {r.key: outcome for r in batch.records},
            {r.key: fold(r.base, r.changes) for r in batch.records},
        )
    results.put(spans)


def test_late_arrivals_retries_and_several_claimers_leave_every_record_at_its_last_change() -> None:
    """2 producers store changes out of order (some delayed by a few places, as late broker
    messages are), 3 claimer processes take random cuts and fail one batch in five: no record
    is ever in two claims at once, and each record's synced state is the one its changes give
    in id order."""
    rng = random.Random(11)
    records = [f"late{n}" for n in range(15)]
    made = [(new_id(), rng.choice(records), seq) for seq in range(600)]  # enqueue order
    shuffled = made[:]
    for i in range(0, len(shuffled) - 1, 3):  # delay some messages by a few places
        j = min(len(shuffled) - 1, i + rng.randint(1, 6))
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    halves = [shuffled[0::2], shuffled[1::2]]
    results = SPAWN.Queue()
    start = SPAWN.Event()
    done = SPAWN.Semaphore(0)
    procs = [SPAWN.Process(target=_producer, args=(h, results, start, done)) for h in halves]
    procs += [SPAWN.Process(target=_worker, args=(results, start, done)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        start.set()
        out = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    spans = sorted((s for log in out for s in log), key=lambda s: s[1])
    last_end: dict[str, float] = {}
    for record, began, ended in spans:  # one claim at a time per record
        assert began >= last_end.get(record, 0.0), f"{record} in two claims at once"
        last_end[record] = ended
    expected: dict[str, dict[str, int]] = {r: {} for r in records}
    for _, record, seq in made:  # in id order, each field keeps its newest value
        expected[record].update({"seq": seq, f"f{seq % 3}": seq})
    assert {r: _state(r, "Revenue") for r in records} == expected
    assert count_rows("status <> 'COMPLETED'") == 0
