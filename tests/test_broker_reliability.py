"""The enqueue path through the broker: a message ends only once its change is stored, or once
it is proven invalid (then kept for an operator); workers live through Redis restarts.

Real worker processes on real Redis (the shared one, this run's queue; or an embedded one the
test restarts) and the test database. Payload values carry a marker that must never show up
in a worker's log.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from dbutil import ADMIN_URL, count_rows
from faultkit import Producer, broker_whereabouts, wait_for
from kombu import Connection
from processes import celery_worker
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from syncqueue_tasks.celery.app import app
from syncqueue_tasks.celery.invalid_messages import discard_invalid, list_invalid, retry_invalid
from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.local.embedded import EmbeddedRedis
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.db import dispose_engine, get_engine

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("db")]

SECRET = "p4yl0ad-v4lue-never-logged"


@pytest.fixture
def broker_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", "broker")
    get_settings.cache_clear()


def _in_broker(item_id: str) -> str | None:
    """Where the message of ``item_id`` is in the test Redis (queued / unacked), or None."""
    where = broker_whereabouts(os.environ["CELERY_BROKER_URL"], _queue(), [item_id])
    return where.get(item_id)


def _queue() -> str:
    return os.environ["CELERY_QUEUE"]


def _queued() -> int:
    return int(Redis.from_url(os.environ["CELERY_BROKER_URL"]).llen(_queue()))


# ------------------------------------------------------------------ at the caller


@pytest.mark.parametrize("mode", ["direct", "broker"])
def test_duplicate_item_ids_raise_validation_error_at_the_caller(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", mode)
    get_settings.cache_clear()
    change = {"action": "UPDATE", "model": "Request", "record_id": "1", "payload": {"n": 1}}
    same = enqueue_changes.prepare([change]).ids[0]
    queued = _queued()
    with pytest.raises(ValidationError, match="item_ids: must be unique"):
        enqueue_changes.delay([change, change], item_ids=[same, same])
    assert count_rows() == 0
    assert _queued() == queued  # nothing published either


def test_wrong_arguments_raise_a_type_error_naming_the_task_not_an_internal_method() -> None:
    with pytest.raises(TypeError) as missing:
        enqueue_change.delay("CREATE", "Request")
    assert str(missing.value) == "enqueue_change(): missing a required argument: 'record_id'"
    with pytest.raises(TypeError, match=r"^enqueue_changes\(\): missing a required argument"):
        enqueue_changes.delay()
    with pytest.raises(TypeError, match=r"^enqueue_change\(\): got an unexpected keyword"):
        enqueue_change.delay("CREATE", "Request", "1", {}, colour="red")
    with pytest.raises(TypeError, match=r"^enqueue_change\(\): too many positional"):
        enqueue_change.delay("CREATE", "Request", "1", {}, None, None, "extra")
    assert count_rows() == 0


# ------------------------------------------------------------------ in the worker


def _set_read_only(database: str, read_only: bool) -> None:
    """Make new sessions of ``database`` read-only (or not) and end its current ones, as a
    failover to a standby (and back) would."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        setting = "on" if read_only else "off"
        conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {setting}')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    dispose_engine()


@pytest.fixture
def database_name() -> Iterator[str]:
    name = make_url(os.environ["DATABASE_URL"]).database
    assert name
    yield name
    _set_read_only(name, False)


@pytest.mark.usefixtures("broker_mode")
def test_a_read_only_database_leaves_the_message_unacknowledged_until_it_is_stored(
    tmp_path: Path, database_name: str
) -> None:
    _set_read_only(database_name, True)
    # A short in-task retry window: the message is handed back to the broker and taken again.
    with celery_worker(tmp_path, {"SYNCQUEUE_ENQUEUE_RETRY_SECONDS": "1"}) as worker:
        result = enqueue_change.delay("UPDATE", "Request", "ro-1", {"secret": SECRET})
        wait_for(lambda: worker.log().count("handed back to the broker") >= 2, timeout=60)
        assert count_rows("id = :id", id=result.id) == 0
        assert _in_broker(result.id) is not None  # not acknowledged: still the broker's
        _set_read_only(database_name, False)
        wait_for(lambda: count_rows("id = :id", id=result.id) == 1, timeout=60)
        wait_for(lambda: _in_broker(result.id) is None, timeout=10, what="acknowledged")
    log = worker.log()
    assert "read-only transaction" in log  # the reason is logged (sanitized, one line)...
    assert SECRET not in log  # ...without the statement's parameters
    assert "Traceback" not in log


@pytest.mark.usefixtures("broker_mode")
def test_an_invalid_message_is_kept_for_an_operator_who_can_retry_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's configuration lacks a model its callers use: their changes are invalid there.
    with celery_worker(tmp_path, {"SYNCQUEUE_MODELS": "Request"}) as worker:
        refused = enqueue_change.delay("CREATE", "Operator", "op-1", {"name": SECRET})
        misshapen = app.send_task("syncqueue.enqueue_change", args=["CREATE"])  # by hand
        wait_for(lambda: len(list_invalid()) == 2, timeout=30)
        for item_id in (refused.id, misshapen.id):
            wait_for(lambda i=item_id: _in_broker(i) is None, timeout=10, what="acknowledged")
    kept = {m.id: m for m in list_invalid()}
    assert kept[refused.id].kwargs["model"] == "Operator"
    assert kept[refused.id].error.startswith("ValidationError: model")
    assert kept[misshapen.id].error == (
        "TypeError: enqueue_change(): missing a required argument: 'model'"
    )
    assert "invalid message kept for an operator" in worker.log()
    assert SECRET not in worker.log()
    assert count_rows() == 0
    # Configuration fixed (here: this process knows Operator): retry sends it through again.
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", "direct")
    get_settings.cache_clear()
    accepted, refusals = retry_invalid(app=enqueue_change.app)
    assert accepted == 1
    assert list(refusals) == [misshapen.id]  # still invalid: stays kept
    assert count_rows("id = :id AND model = 'Operator'", id=refused.id) == 1
    assert [m.id for m in list_invalid()] == [misshapen.id]
    assert discard_invalid([misshapen.id]) == 1
    assert list_invalid() == []


@pytest.mark.usefixtures("broker_mode")
def test_a_change_whose_worker_dies_while_storing_it_returns_within_the_visibility_timeout(
    tmp_path: Path,
) -> None:
    env = {"CELERY_VISIBILITY_TIMEOUT": "4"}
    engine = get_engine()
    with engine.connect() as locker:
        locker.execute(text("LOCK TABLE sync_queue IN SHARE ROW EXCLUSIVE MODE"))
        with celery_worker(tmp_path, env) as worker:
            result = enqueue_change.delay("CREATE", "Request", "held", {"secret": SECRET})
            wait_for(lambda: "received" in worker.log(), timeout=20)
            time.sleep(0.5)  # its INSERT now waits on the lock
            worker.kill()  # SIGKILL, main process and pool: nothing acknowledges or requeues
            worker.proc.wait(10)
        locker.rollback()
    assert _in_broker(result.id) is not None
    started = time.monotonic()
    with celery_worker(tmp_path, env):
        wait_for(lambda: count_rows("id = :id", id=result.id) == 1, timeout=60)
    # Redelivered after the visibility timeout (4 s) by the next restore sweep (every ~10 s),
    # the new worker's start included: bounded, where it used to take an hour.
    assert time.monotonic() - started < 45


@pytest.mark.usefixtures("broker_mode")
def test_a_worker_lives_through_two_redis_restarts_and_everything_around_them_is_stored(
    tmp_path: Path,
) -> None:
    broker = EmbeddedRedis(data_dir=tmp_path / "redis", persistent=True)
    broker.start()
    env = {
        "CELERY_BROKER_URL": broker.url,
        "CELERY_QUEUE": f"restarts_{uuid.uuid4().hex[:8]}",
        "SYNCQUEUE_ENQUEUE_MODE": "broker",
        "CELERY_VISIBILITY_TIMEOUT": "10",
    }
    producer = None
    try:
        with celery_worker(tmp_path, env, concurrency=2) as worker:
            pid = worker.pid
            producer = Producer(
                tmp_path, env, changes=1500, records=100, rate=100, bulk_every=3, seed=7
            )
            received, held = [], []  # "received" lines after each restart, ETA messages
            for n in range(2):
                time.sleep(3)
                # A message the worker holds unacknowledged when Redis goes (an ETA task):
                # closing the lost connection restores such messages; that crashed the worker.
                with Connection(broker.url) as conn:
                    args = ("UPDATE", "Request", f"held-{n}", {"n": n})
                    queue = env["CELERY_QUEUE"]
                    result = enqueue_change.apply_async(
                        args, countdown=15, connection=conn, queue=queue
                    )
                    held.append(result.id)
                wait_for(lambda i=result.id: f"[{i}] received" in worker.log(), timeout=10)
                broker.stop()
                time.sleep(2)
                broker.start()
                received.append(worker.log().count(" received"))
            summary = producer.wait(60)
            ids = [a["id"] for a in producer.accepted()]
            assert summary["errors"] == 0 and len(ids) == 1500
            ids += held
            wait_for(lambda: count_rows("id = ANY(:ids)", ids=ids) == len(ids), timeout=90)
            assert worker.proc.poll() is None and worker.pid == pid
            assert worker.log().count(" received") > received[-1]  # consumed after the 2nd
        assert "Unrecoverable error" not in worker.log()
        assert worker.log().count("Connection to broker lost") >= 2
    finally:
        if producer is not None:
            producer.stop()
        broker.stop()
