"""The package's tasks on a user's own Celery app (tests/own_app.py): ``.delay()`` publishes
through that app, to its queue, and a real worker of that app stores and writes the changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import own_app
import pytest
from celery import Celery, _state
from conftest import REDIS_URL, TEST_QUEUE
from dbutil import count_rows
from processes import celery_worker
from redis import Redis
from test_tasks import read_written, wait_for

from syncqueue_tasks.celery.setup import TASK_MODULES, configure
from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.settings import get_settings

pytestmark = [pytest.mark.usefixtures("db"), pytest.mark.system]


@pytest.fixture
def current_own_app() -> Iterator[Celery]:
    """The user's app as this thread's current app (Celery's shared tasks resolve to it),
    as in the user's process; the previous current app afterwards."""
    previous = _state._tls.current_app  # Celery has no public getter that tells "none"
    own_app.app.set_current()
    yield own_app.app
    _state._set_current_app(previous)


@pytest.mark.parametrize("mode", ["broker", "direct"])
def test_a_users_own_app_and_worker_run_the_tasks(
    mode: str,
    current_own_app: Celery,
    recorded: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """broker: the enqueue messages go to the user's queue, their worker stores the changes
    and kicks process_batch through the user's app; direct: the caller stores them and kicks
    process_batch through the user's app. Either way only the user's worker can write them."""
    monkeypatch.setenv("SYNCQUEUE_ENQUEUE_MODE", mode)
    get_settings.cache_clear()
    assert enqueue_change.app is current_own_app
    ids = [new_id(), new_id()]
    with celery_worker(tmp_path, app="own_app", queue=own_app.QUEUE) as worker:
        one = enqueue_change.delay("CREATE", "Operator", "op-1", {"name": "Bo"})
        enqueue_changes.delay(
            [
                {"action": "CREATE", "model": "Request", "record_id": "r-1", "payload": {"n": 1}},
                {"action": "UPDATE", "model": "Request", "record_id": "r-2", "payload": {"n": 2}},
            ],
            item_ids=ids,
        )
        wait_for(lambda: count_rows("status = 'COMPLETED'") == 3)
        worker.wait_for("Task syncqueue.process_batch[")
    assert sorted(line["id"] for line in read_written(recorded)) == sorted([one.id, *ids])
    assert count_rows() == 3
    log = worker.log()
    assert "[queues]" in log and f".> {own_app.QUEUE} " in log  # the worker of the user's queue
    if mode == "broker":
        assert "Task syncqueue.enqueue_change[" in log and "Task syncqueue.enqueue_changes[" in log
    redis = Redis.from_url(REDIS_URL)
    try:
        # Nothing was sent to the package app's queue (no worker consumes it in this test).
        assert redis.llen(TEST_QUEUE) == 0
        # The user's queue may still hold a kick the worker had scheduled (an ETA message goes
        # back to its queue when the worker stops), never an enqueue message.
        left = [json.loads(m)["headers"]["task"] for m in redis.lrange(own_app.QUEUE, 0, -1)]
        assert set(left) <= {"syncqueue.process_batch"}, left
    finally:
        redis.close()


def test_configure_sets_what_the_tasks_need_and_keeps_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = {"task": "syncqueue.process_batch", "schedule": 60.0}
    app = Celery("yours", broker="redis://127.0.0.1:6379/0", set_as_current=False)
    app.conf.update(
        worker_prefetch_multiplier=8,
        broker_transport_options={"visibility_timeout": 999},
        beat_schedule={"process-batch": mine},
        task_routes={"yours.*": {"queue": "yours"}},
    )
    configure(app, queue="sync")
    conf = app.conf
    assert conf.worker_consumer == "syncqueue_tasks.celery.consumer:GuardedConsumer"
    assert conf.broker_transport == "syncqueue_tasks.celery.broker_guard:GuardedRedisTransport"
    assert conf.worker_prefetch_multiplier == 8
    assert conf.broker_transport_options["visibility_timeout"] == 999
    assert conf.broker_transport_options["priority_steps"] == [0]
    assert conf.beat_schedule["process-batch"] is mine
    assert {"reset-stuck", "cleanup-completed"} <= set(conf.beat_schedule)
    assert set(TASK_MODULES) <= set(conf.include)
    route = app.amqp.router.route
    assert route({}, "syncqueue.reset_stuck")["queue"].name == "sync"
    assert route({}, "yours.add")["queue"].name == "yours"
    assert app.tasks["syncqueue.process_batch"].app is app

    monkeypatch.delenv("CELERY_BROKER_URL")  # Celery prefers it to the app's broker=
    rabbit = Celery("rabbit", broker="amqp://localhost//", set_as_current=False)
    configure(rabbit, schedule=False)
    assert rabbit.conf.broker_transport is None
    assert rabbit.conf.broker_transport_options["confirm_publish"] is True
    assert rabbit.conf.beat_schedule == {}
