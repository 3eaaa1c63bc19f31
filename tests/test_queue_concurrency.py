"""Concurrency claims, proven with several OS processes against the real PostgreSQL."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import random
import threading
import time
from collections import defaultdict

import pytest
from dbutil import count_rows
from sqlalchemy import text

from syncqueue_tasks import queue, sql
from syncqueue_tasks.db import get_engine

pytestmark = pytest.mark.usefixtures("db")

SPAWN = mp.get_context("spawn")


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


def _ordered_worker(results: mp.Queue, start: mp.Event) -> None:  # type: ignore[type-arg]
    """Claim small batches; fail some items (retryable); log (record, id, start, end)."""
    start.wait()
    rng = random.Random()
    log: list[tuple[str, str, float, float]] = []
    while True:
        items = queue.dequeue(rng.randint(1, 8))
        if not items:
            stats = queue.get_queue_stats()
            if stats["pending"] + stats["processing"] == 0:
                break
            time.sleep(0.005)
            continue
        began = time.monotonic()
        time.sleep(rng.random() * 0.003)  # "writing"
        # A record's later changes in the batch wait for an earlier one that failed.
        failing: set[str] = set()
        failed = []
        for item in items:
            if item.record_id in failing or rng.random() < 0.2:
                failing.add(item.record_id)
                failed.append(item)
        done = [i for i in items if i not in failed]
        ended = time.monotonic()
        for item in done:
            log.append((item.record_id, item.id, began, ended))
        queue.mark_complete_many(done)
        queue.mark_failed_many(queue.Failure(i, "flaky") for i in failed)
    results.put(log)


def test_per_record_order_and_no_record_in_two_workers_at_once(monkeypatch) -> None:
    # Failures go back to PENDING with a short backoff and must still block later changes.
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_BASE_SECONDS", "0.02")
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_MAX_SECONDS", "0.1")
    records = [f"rec{n}" for n in range(10)]
    changes = [
        {
            "action": "UPDATE",
            "model": "Operator",
            "record_id": rng_record,
            "payload": {"seq": n},
            "max_retries": 100,
        }
        for n, rng_record in enumerate(random.Random(7).choice(records) for _ in range(400))
    ]
    ids = queue.enqueue_many(changes, session=None)
    for extra in queue.enqueue_many(changes[:100]):  # a second burst, interleaved later
        ids.append(extra)
    from sqlalchemy import text as _tx

    from syncqueue_tasks.db import get_engine as _ge

    with _ge().begin() as c:
        c.execute(_tx("ANALYZE sync_queue"))
    enqueue_order = {item_id: n for n, item_id in enumerate(ids)}
    logs = _run_workers(_ordered_worker, (), workers=4)
    by_record: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for log in logs:
        for record_id, item_id, began, ended in log:
            by_record[record_id].append((item_id, began, ended))
    assert sum(len(v) for v in by_record.values()) == len(ids)
    assert sum(1 for log in logs if log) >= 2  # the work really was shared
    for record_id, entries in by_record.items():
        entries.sort(key=lambda e: e[1])  # by the time the write began
        written_order = [enqueue_order[e[0]] for e in entries]
        assert written_order == sorted(written_order), f"{record_id} written out of order"
        for earlier, later in itertools.pairwise(entries):
            if earlier[0] != later[0]:
                # a different change of this record: it never overlapped the previous one
                # unless both were in the same batch (one worker, one write, in order)
                assert later[1] >= earlier[2] or later[1] == earlier[1], record_id
    assert count_rows("status <> 'COMPLETED'") == 0


def _late_producer(
    changes: list[tuple[str, str, int]],
    results: mp.Queue,  # type: ignore[type-arg]
    start: mp.Event,  # type: ignore[type-arg]
    done: mp.Semaphore,  # type: ignore[type-arg]
) -> None:
    """Store (id, record, seq) changes in the given (shuffled) order: one or three at a time."""
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
                    "payload": {"seq": n},
                    "max_retries": 100,
                }
                for _, r, n in chunk
            ],
            item_ids=[item_id for item_id, _, _ in chunk],
        )
    done.release()
    results.put([])


def _applying_worker(
    results: mp.Queue,  # type: ignore[type-arg]
    start: mp.Event,  # type: ignore[type-arg]
    done: mp.Semaphore,  # type: ignore[type-arg]
) -> None:
    """Drain while producers run; report each applied (record, seq) in application order.

    One batch in five is reported failed (retried at once), half of them after applying it
    (the lost-response case), so claimed changes go back to PENDING around late arrivals.
    """
    start.wait()
    rng = random.Random()
    applied: list[tuple[str, int, float]] = []
    while True:
        items = queue.dequeue(10)
        if not items:
            stats = queue.get_queue_stats()
            producers_done = done.get_value() == 2  # type: ignore[attr-defined]
            if producers_done and stats["pending"] + stats["processing"] == 0:
                break
            time.sleep(0.02)
            continue
        fail, lost_response = rng.random() < 0.2, rng.random() < 0.5
        if not fail or lost_response:
            for item in items:
                applied.append((item.record_id, item.payload["seq"], time.monotonic()))
        if fail:
            queue.mark_failed_many(queue.Failure(i, "flaky", retry_after=0) for i in items)
        else:
            queue.mark_complete_many(items)
    results.put(applied)


def test_late_arrivals_and_retries_leave_every_record_in_enqueue_order() -> None:
    from syncqueue_tasks.ids import new_id

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
    procs = [SPAWN.Process(target=_late_producer, args=(h, results, start, done)) for h in halves]
    procs += [SPAWN.Process(target=_applying_worker, args=(results, start, done)) for _ in range(3)]
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
    applied = sorted((entry for log in out for entry in log), key=lambda e: e[2])
    last_seq = {record: seq for _, record, seq in made}
    final: dict[str, int] = {}
    last_write: dict[str, dict[int, int]] = {r: {} for r in records}
    for n, (record, seq, _) in enumerate(applied):
        final[record] = seq
        last_write[record][seq] = n
    assert final == last_seq  # each record ends at its last-enqueued change
    assert {seq for _, seq, _ in applied} == set(range(600))  # every change was applied
    for record, lasts in last_write.items():
        # each change's last write comes after the last writes of the changes before it
        in_write_order = sorted(lasts, key=lasts.__getitem__)
        assert in_write_order == sorted(in_write_order), record
    assert count_rows("status <> 'COMPLETED'") == 0


def test_a_claim_gives_back_what_a_store_committed_during_it_overtook() -> None:
    """A claim's snapshot predates a store that commits before the claim reaches its record.

    The claim walks past 50,000 PENDING changes queued behind a record's head that another
    transaction holds locked (SKIP LOCKED skips it; none of the others is a head), which keeps
    it busy long enough for a late change of another record to be stored and committed in
    between. Without the recheck, the claim took that record's later change and it was
    written before the late one, and never again after it.
    """
    from syncqueue_tasks.ids import new_id

    with get_engine().begin() as conn:
        conn.execute(
            text("""
            INSERT INTO sync_queue (id, origin_id, position, action, model, record_id, payload,
                                    status)
            SELECT lpad(n::text, 26, '0'), lpad(n::text, 26, '0'), lpad(n::text, 26, '0'),
                   'UPDATE', 'Busy', 'z', '{}', 'PENDING'
            FROM generate_series(1, 50000) AS n
        """)
        )
    holder = get_engine().connect()  # holds the busy record's head: claims skip it
    holder.begin()
    holder.execute(text("SELECT 1 FROM sync_queue WHERE id = :i FOR UPDATE"), {"i": "0" * 25 + "1"})
    late, later = new_id(), new_id()
    queue.enqueue("UPDATE", "Request", "a", {"v": 2}, item_id=later)
    claim: dict[str, object] = {}

    def claimer() -> None:
        claim["items"] = queue.dequeue(5)
        claim["done"] = time.monotonic()

    thread = threading.Thread(target=claimer)
    thread.start()
    claiming = text(
        "SELECT count(*) FROM pg_stat_activity "  # a fresh statistics snapshot each time:
        "WHERE state = 'active' AND query LIKE '%WITH heads AS%'"  # one transaction per look
    )
    while thread.is_alive():
        with get_engine().connect() as watcher:
            if watcher.execute(claiming).scalar_one():
                break
        time.sleep(0.001)
    queue.enqueue("UPDATE", "Request", "a", {"v": 1}, item_id=late)  # late: stored mid-claim
    stored = time.monotonic()
    thread.join(60)
    assert stored < claim["done"]  # the store landed inside the claim, the case under test
    applied = [i.payload["v"] for i in claim["items"] if i.record_id == "a"]  # type: ignore[attr-defined]
    queue.mark_complete_many(claim["items"])  # type: ignore[arg-type]
    while items := [i for i in queue.dequeue(5) if i.record_id == "a"]:
        applied += [i.payload["v"] for i in items]
        queue.mark_complete_many(items)
    holder.rollback()
    holder.close()
    assert applied[-1] == 2 and 1 in applied  # v=1 was written, then v=2 after it


@pytest.mark.parametrize("mark", ["complete", "fail", "reset_stuck"])
def test_a_mark_waits_for_a_store_replaying_its_record(mark: str) -> None:
    """A store replaying a record moves its claimed rows: a mark of those rows waits for it
    (shared advisory lock against the store's exclusive one) instead of interleaving row locks
    with it, which deadlocked a store and a mark working on two records in opposite orders."""
    queue.enqueue("UPDATE", "Request", "a", {"v": 1})
    [item] = queue.dequeue()
    if mark == "reset_stuck":
        with get_engine().begin() as conn:
            conn.execute(text("UPDATE sync_queue SET claimed_at = now() - interval '1 hour'"))
    calls = {
        "complete": lambda: queue.mark_complete(item),
        "fail": lambda: queue.mark_failed(item, "x", retry_after=0),
        "reset_stuck": lambda: queue.reset_stuck(older_than_minutes=1),
    }
    outcome: list[object] = []
    with get_engine().connect() as store:
        store.begin()
        store.execute(sql.LOCK_RECORDS, {"models": ["Request"], "record_ids": ["a"]})
        thread = threading.Thread(target=lambda: outcome.append(calls[mark]()))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive() and not outcome  # waiting for the store
        store.commit()
    thread.join(10)
    assert outcome and outcome[0] in (True, "PENDING", 1)
