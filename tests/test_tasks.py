"""Celery integration: real Redis, an in-process worker thread and real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dbutil import count_rows
from processes import celery_beat, celery_worker, child_env
from sqlalchemy import text

from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes, process_batch, reset_stuck
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.store import queue
from syncqueue_tasks.store.db import get_engine

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("db")]


def read_written(path: Path) -> list[dict]:
    """What the recording writer wrote, one entry per change per record write (its ``id``,
    with the record write's line: model, record_id, action, state, pid...), in file order."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{**line, "id": change_id} for line in lines for change_id in line["changes"]]


def wait_for(predicate, timeout: float = 30, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def test_delay_reaches_the_writer_and_completes(celery_worker, recorded: Path) -> None:
    result = enqueue_change.delay("CREATE", "Request", "req-1", {"name": "Ann"})
    wait_for(lambda: count_rows("status = 'COMPLETED'") == 1)
    [line] = read_written(recorded)
    assert line["id"] == result.id
    assert (line["action"], line["model"], line["record_id"], line["state"]) == (
        "CREATE",
        "Request",
        "req-1",
        {"name": "Ann"},
    )


@pytest.mark.parametrize("mode", ["direct", "broker"])
def test_bulk_delay_and_redelivery_make_no_second_row(
    celery_worker, recorded: Path, monkeypatch, mode: str
) -> None:
    # direct: the caller stores; broker: the worker stores what the message carries.
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", mode)
    changes = [
        {"action": "UPDATE", "model": "Operator", "record_id": str(i), "payload": {"n": i}}
        for i in range(20)
    ]
    prepared = enqueue_changes.prepare(changes).message
    enqueue_changes.delay(**prepared)
    enqueue_changes.delay(**prepared)  # the same message delivered twice
    wait_for(lambda: count_rows("status = 'COMPLETED'") == 20)
    time.sleep(0.5)
    assert count_rows() == 20
    assert sorted(line["id"] for line in read_written(recorded)) == sorted(prepared["item_ids"])


def test_bad_input_raises_in_the_caller_before_anything_is_published() -> None:
    with pytest.raises(ValidationError, match="model"):
        enqueue_change.delay("CREATE", "Nope", "1", {})
    with pytest.raises(ValidationError, match="payload"):
        enqueue_change.delay("CREATE", "Request", "1", ["not", "an", "object"])
    with pytest.raises(ValidationError, match="action"):
        enqueue_changes.delay(
            [{"action": "MOVE", "model": "Request", "record_id": "1", "payload": {}}]
        )
    assert count_rows() == 0


@pytest.mark.parametrize("mode", ["direct", "broker"])
def test_enqueue_change_carries_max_retries_like_enqueue(
    mode: str, celery_worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both enqueue paths take the same fields: ``max_retries`` too, checked at the call."""
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", mode)
    with pytest.raises(ValidationError, match="max_retries"):
        enqueue_change.delay("CREATE", "Request", "1", {}, max_retries=-1)
    item_id = enqueue_change.delay("CREATE", "Request", "1", {"a": 1}, max_retries=7).id
    wait_for(lambda: count_rows("id = :id", id=item_id) == 1)
    assert count_rows("id = :id AND max_retries = 7", id=item_id) == 1
    assert count_rows() == 1


_DELAY_SCRIPT = """
import json, sys, time
from syncqueue_tasks.celery.tasks import enqueue_change
from syncqueue_tasks.core.errors import EnqueueError
timings, ids, error = [], [], None
for n in range(5):
    start = time.perf_counter()
    try:
        ids.append(enqueue_change.delay("UPDATE", "Revenue", "r%d" % n, {"amount": n}).id)
    except EnqueueError as exc:
        error = str(exc)
    timings.append(time.perf_counter() - start)
print(json.dumps({"timings": timings, "ids": ids, "error": error}))
"""


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_delay_script(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _DELAY_SCRIPT],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_never_waits_on_a_dead_service(timings: list[float]) -> None:
    """No call waits for a dead service's timeouts (seconds: a socket or retry timeout).

    The first call also pays for the first connections and lazy imports (about 0.1 s on a
    loaded 2-core machine), so it gets 1 s; every later call stays under 100 ms.
    """
    first, *rest = timings
    assert first < 1.0 and max(rest) < 0.1, timings


@pytest.mark.parametrize("mode", ["direct", "broker"])
def test_broker_down_delay_returns_fast_and_stores_in_postgresql(mode: str) -> None:
    result = _run_delay_script(
        {
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0",
            "SYNCQUEUE_ENQUEUE_MODE": mode,
        }
    )
    assert result["error"] is None
    assert len(result["ids"]) == 5
    assert_never_waits_on_a_dead_service(result["timings"])
    assert count_rows("id = ANY(:ids) AND status = 'PENDING'", ids=result["ids"]) == 5


def test_database_down_hands_the_change_to_the_broker_and_a_worker_stores_it(
    tmp_path: Path,
) -> None:
    result = _run_delay_script(
        {"DATABASE_URL": f"postgresql+psycopg://app:pw@127.0.0.1:{_closed_port()}/x"}
    )
    assert result["error"] is None and len(result["ids"]) == 5
    assert_never_waits_on_a_dead_service(result["timings"])
    assert count_rows() == 0  # not stored yet: the messages wait on the broker
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(tmp_path / "w.jsonl"),
    }
    with celery_worker(tmp_path, env):  # a worker that reaches the database stores them
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 5, timeout=30)
    assert count_rows("id = ANY(:ids)", ids=result["ids"]) == 5


@pytest.mark.parametrize("mode", ["direct", "broker"])
def test_broker_and_database_down_raise_enqueue_error(mode: str) -> None:
    result = _run_delay_script(
        {
            "SYNCQUEUE_ENQUEUE_MODE": mode,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0",
            "DATABASE_URL": f"postgresql+psycopg://app:hunter2@127.0.0.1:{_closed_port()}/x",
        }
    )
    assert result["ids"] == []
    assert "broker" in result["error"] and "database" in result["error"]
    assert "hunter2" not in result["error"]


def test_writer_exception_fails_the_batch_retryably_with_a_sanitized_error(
    celery_worker, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNCQUEUE_WRITER", "recording_writer:raising")
    monkeypatch.setenv("SYNCQUEUE_JSONL_PATH", str(tmp_path / "w.jsonl"))
    monkeypatch.setenv("SYNCQUEUE_BACKOFF_BASE_SECONDS", "600")
    queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": str(i), "payload": {}}
        for i in range(5)
    )
    process_batch.delay()
    wait_for(lambda: count_rows("retries = 1") == 5)
    assert count_rows("status = 'PROCESSING'") == 0
    with get_engine().connect() as conn:
        errors = conn.execute(text("SELECT DISTINCT last_error FROM sync_queue")).scalars().all()
    [error] = errors
    assert error.startswith("ConnectionError: cannot reach")
    assert "s3cr3t" not in error and "abc123" not in error and "Traceback" not in error


def test_permanent_failures_fail_only_their_items(celery_worker, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SYNCQUEUE_WRITER", "recording_writer:picky")
    monkeypatch.setenv("SYNCQUEUE_JSONL_PATH", str(tmp_path / "w.jsonl"))
    queue.enqueue_many(
        {
            "action": "CREATE",
            "model": "Request",
            "record_id": str(i),
            "payload": {"bad": "total"} if i % 3 == 0 else {"ok": i},
        }
        for i in range(9)
    )
    process_batch.delay()
    wait_for(lambda: count_rows("status IN ('COMPLETED', 'FAILED')") == 9)
    assert count_rows("status = 'FAILED' AND last_error = 'column ''total'' is protected'") == 3
    assert count_rows("status = 'COMPLETED'") == 6


def test_a_slow_writer_past_the_soft_time_limit_leaves_nothing_processing(tmp_path) -> None:
    queue.enqueue_many(
        {"action": "CREATE", "model": "Request", "record_id": str(i), "payload": {}}
        for i in range(5)
    )
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(tmp_path / "w.jsonl"),
        "RECORDING_SLEEP": "5",
        "SYNCQUEUE_BACKOFF_BASE_SECONDS": "600",
    }
    with celery_worker(tmp_path, env) as worker:
        # The limits travel in the message (the caller's task settings win over the worker's).
        process_batch.apply_async(soft_time_limit=1, time_limit=10)
        wait_for(lambda: count_rows("retries = 1") == 5, timeout=30)
        assert count_rows("status = 'PROCESSING'") == 0
        assert count_rows("last_error LIKE 'SoftTimeLimitExceeded%'") == 5
        assert worker.proc.poll() is None


def test_worker_killed_mid_batch_loses_nothing(tmp_path: Path) -> None:
    written = tmp_path / "written.jsonl"
    ids = queue.enqueue_many(
        {"action": "UPDATE", "model": "Revenue", "record_id": f"r{i % 30}", "payload": {"n": i}}
        for i in range(60)
    )  # 30 records: batches of 10 records, so a batch is in flight after the first write
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(written),
        "RECORDING_SLEEP": "2",  # long writes: the kill lands inside one
        "SYNCQUEUE_BATCH_SIZE": "10",
    }
    with celery_worker(tmp_path, env, concurrency=2) as worker:
        process_batch.delay()
        process_batch.delay()
        # The first writes end (the file appears) as their outcomes are recorded and the next
        # batch is claimed: a kill then could land in the moment between. The next batch's
        # write takes 2 s: kill a moment into it.
        wait_for(written.exists)
        time.sleep(0.3)
        wait_for(lambda: count_rows("status = 'PROCESSING'") > 0)
        worker.kill()  # SIGKILL the whole worker, pool children included
        worker.proc.wait(10)
    stuck = count_rows("status = 'PROCESSING'")
    assert stuck > 0  # the kill really hit a batch in flight
    with celery_worker(tmp_path, env, concurrency=2):
        assert queue.reset_stuck(older_than_minutes=0) == stuck
        process_batch.delay()
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 60, timeout=60)
    assert {line["id"] for line in read_written(written)} == set(ids)  # 0 lost
    assert count_rows("status <> 'COMPLETED'") == 0


def test_beat_schedule_comes_from_the_environment() -> None:
    script = (
        "import json, celeryconfig as c; s = c.beat_schedule; "
        "print(json.dumps([s['process-batch']['schedule'], s['reset-stuck']['schedule'], "
        "s['reset-stuck']['kwargs'], str(s['cleanup-completed']['schedule'])]))"
    )
    env = {
        "SYNCQUEUE_PROCESS_BATCH_EVERY": "3",
        "SYNCQUEUE_RESET_STUCK_EVERY": "42",
        "SYNCQUEUE_STUCK_MINUTES": "15",
        "SYNCQUEUE_CLEANUP_CRON": "30 4 * * 1",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(env),
        capture_output=True,
        text=True,
        check=True,
    )
    every, reset_every, reset_kwargs, cleanup = json.loads(out.stdout)
    assert (every, reset_every, reset_kwargs) == (3.0, 42.0, {"older_than_minutes": 15.0})
    assert "30" in cleanup and "4" in cleanup and "1" in cleanup


def test_a_real_beat_makes_a_worker_process_the_queue(tmp_path: Path) -> None:
    written = tmp_path / "written.jsonl"
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(written),
        "SYNCQUEUE_PROCESS_BATCH_EVERY": "1",
    }
    # Stored without .delay(): no kick; and no message of earlier tests left on the queue.
    # So only beat can get it processed.
    from syncqueue_tasks.celery.app import app

    app.control.purge()
    queue.enqueue("CREATE", "Operator", "op-1", {"name": "Bo"})
    with celery_worker(tmp_path, env), celery_beat(tmp_path, env) as beat:
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 1, timeout=30)
        beat.wait_for("Sending due task process-batch (syncqueue.process_batch)")
    assert [line["record_id"] for line in read_written(written)] == ["op-1"]


def test_several_workers_and_overlapping_runs_write_each_change_once_and_end_at_the_last(
    tmp_path: Path,
) -> None:
    written = tmp_path / "written.jsonl"
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(written),
        "SYNCQUEUE_BATCH_SIZE": "50",
    }
    changes = [
        {"action": "UPDATE", "model": "Request", "record_id": f"r{i % 250}", "payload": {"n": i}}
        for i in range(5000)
    ]
    ids: list[str] = []
    for start in range(0, 5000, 500):
        ids += queue.enqueue_many(changes[start : start + 500])
    with celery_worker(tmp_path, env, concurrency=2), celery_worker(tmp_path, env, concurrency=2):
        for _ in range(12):  # overlapping runs, as beat ticks and kicks would make
            process_batch.delay()
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 5000, timeout=180, interval=0.5)
    lines = read_written(written)
    assert len(lines) == 5000 and {line["id"] for line in lines} == set(ids)  # exactly once
    assert len({line["pid"] for line in lines}) >= 2  # several processes shared the work
    final = {line["record_id"]: line["state"]["n"] for line in lines}  # file order: write order
    assert final == {f"r{r}": 4750 + r for r in range(250)}  # each record at its last change


def test_enqueues_kick_a_debounced_process_batch(celery_worker, recorded: Path) -> None:
    from celery.signals import task_prerun

    runs: list[str] = []

    def count_runs(sender=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if sender is not None and sender.name == "syncqueue.process_batch":
            runs.append(kwargs["task_id"])

    task_prerun.connect(count_runs, weak=False)
    try:
        ids = [
            enqueue_change.delay("UPDATE", "Revenue", f"m{i % 40}", {"n": i}).id for i in range(300)
        ]
        # No beat is running: only the kicks that follow the enqueues can drain the queue.
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 300, timeout=60)
    finally:
        task_prerun.disconnect(count_runs)
    assert {line["id"] for line in read_written(recorded)} == set(ids)
    assert 1 <= len(runs) <= 30, len(runs)  # a burst of 300 enqueues: a handful of runs


def test_reset_stuck_schedules_a_run_for_what_it_returned(celery_worker, recorded: Path) -> None:
    item_id = queue.enqueue("UPDATE", "Request", "r1", {"v": 1})  # stored without a kick
    [claimed] = queue.dequeue()  # ... and claimed by a worker that then died
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE sync_record SET claimed_at = now() - interval '1 hour'"))
    reset_stuck.delay(30)  # beat's job; it finds the claim and returns it to PENDING
    wait_for(lambda: count_rows("status = 'COMPLETED'") == 1)  # no beat runs here
    assert [line["id"] for line in read_written(recorded)] == [claimed.id] == [item_id]


def test_delay_with_its_record_held_by_an_open_transaction_goes_to_the_broker_at_once(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """Finding 5 of issue 10: .delay() of a record that an open outbox transaction holds
    waited for it (8 s, no fallback). Now the direct store gives up after its lock timeout
    (SYNCQUEUE_ENQUEUE_TIMEOUT_MS) and the change goes to the broker: every call returns while
    the transaction is still open, and a worker stores the changes once it ends."""
    from sqlalchemy.orm import Session

    queue.enqueue("CREATE", "Request", "42", {"n": 0})
    timings: list[float] = []
    ids: list[str] = []
    with Session(get_engine()) as outbox:
        queue.enqueue("UPDATE", "Request", "42", {"n": 1}, session=outbox)  # holds record 42
        for n in range(2, 22):
            started = time.perf_counter()
            ids.append(enqueue_change.delay("UPDATE", "Request", "42", {"n": n}).id)
            timings.append(time.perf_counter() - started)
        assert count_rows("id = ANY(:ids)", ids=ids) == 0  # all handed to the broker
        outbox.commit()  # only now does the record come free
    timings.sort()
    record_property("delay_p50_ms", round(timings[len(timings) // 2] * 1000, 1))
    record_property("delay_max_ms", round(timings[-1] * 1000, 1))
    env = {
        "SYNCQUEUE_WRITER": "recording_writer:recording",
        "SYNCQUEUE_JSONL_PATH": str(tmp_path / "w.jsonl"),
    }
    with celery_worker(tmp_path, env):
        wait_for(lambda: count_rows("id = ANY(:ids) AND status = 'COMPLETED'", ids=ids) == 20)
    view = queue.get_record("Request", "42")
    assert view is not None and view.state.fields == {"n": 21}  # the last change wins
