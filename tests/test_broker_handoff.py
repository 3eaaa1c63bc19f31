"""The moment between "the broker gave a message to a worker" and "the broker knows it did".

A consumer process takes one message and is killed (``os._exit``, as SIGKILL would) right
there: after the message left the queue, before the ack-emulation saved it as unacknowledged.

- kombu's own Redis transport (``BRPOP``, then ``QoS.append``): the message is gone from
  Redis, in neither the queue nor the ``unacked`` hash; nothing redelivers it. This is the
  window behind the Redis-path losses (issue 16); the test keeps showing it, so a kombu
  release that closes it would be noticed.
- The guarded transport (``BLMOVE`` into an in-flight list): the message waits there, and the
  next ``restore_visible`` sweep after a visibility timeout puts it back on its queue.
- RabbitMQ: the unacknowledged delivery returns to the queue when the connection dies.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from faultkit import RabbitVhost
from kombu import Connection, Exchange, Queue
from redis import Redis

from syncqueue_tasks.local.embedded import EmbeddedRedis

pytestmark = pytest.mark.system

GUARDED = "syncqueue_tasks.celery.broker_guard:GuardedRedisTransport"
OPTIONS = {"priority_steps": [0], "visibility_timeout": 1}

# Consume one message from argv[3] on argv[1] (transport argv[2]); die as soon as the client
# has it: in the ack emulation's "save as unacknowledged" (Redis), or on delivery (AMQP).
_CONSUME_AND_DIE = """
import os, sys
from kombu import Connection, Consumer, Exchange, Queue
url, transport, name = sys.argv[1:4]
conn = Connection(url, transport=transport or None,
                  transport_options={"priority_steps": [0], "visibility_timeout": 1})
channel = conn.default_channel
qos = getattr(channel, "qos", None)
if hasattr(qos, "restore_visible"):  # kombu's Redis ack emulation
    qos.append = lambda message, tag: os._exit(9)
queue = Queue(name, Exchange(name), routing_key=name)
with Consumer(channel, [queue], callbacks=[lambda body, message: os._exit(9)]):
    conn.drain_events(timeout=20)
os._exit(3)
"""


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)


def _publish(url: str, name: str, transport: str | None = None) -> None:
    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        conn.Producer().publish({"n": 1}, declare=[_queue(name)], routing_key=name, exchange=name)


def _consume_and_die(url: str, name: str, transport: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CONSUME_AND_DIE, url, transport, name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9, done.stderr[-2000:]


def _take(url: str, name: str, transport: str | None = None) -> list[object]:
    """Bodies of the messages a fresh consumer gets within a few seconds."""
    got: list[object] = []
    with Connection(url, transport=transport, transport_options=OPTIONS) as conn:
        consumer = conn.Consumer(
            [_queue(name)], callbacks=[lambda body, m: (got.append(body), m.ack())]
        )
        with consumer:
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    return got


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_kombus_redis_transport_loses_a_message_whose_consumer_dies_before_saving_it(
    redis_server: EmbeddedRedis,
) -> None:
    _publish(redis_server.url, "window", "redis")
    _consume_and_die(redis_server.url, "window", "redis")
    client = Redis.from_url(redis_server.url)
    assert client.llen("window") == 0  # popped...
    assert client.hlen("unacked") == 0  # ...and never saved: nothing will redeliver it
    assert _take(redis_server.url, "window", "redis") == []


def test_the_guarded_transport_keeps_it_in_flight_and_redelivers_it(
    redis_server: EmbeddedRedis,
) -> None:
    _publish(redis_server.url, "window", GUARDED)
    _consume_and_die(redis_server.url, "window", GUARDED)
    client = Redis.from_url(redis_server.url)
    assert (client.llen("window"), client.hlen("unacked")) == (0, 0)
    assert client.llen("unacked_inflight") == 1  # taken, not lost
    with Connection(redis_server.url, transport=GUARDED, transport_options=OPTIONS) as conn:
        qos = conn.default_channel.qos
        qos.restore_visible(interval=1)  # first sweep: notes when it saw the message
        assert client.llen("window") == 0
        time.sleep(1.2)  # the visibility timeout (1 s here)
        qos.restore_visible(interval=1)  # second sweep: back on its queue
    assert (client.llen("window"), client.llen("unacked_inflight")) == (1, 0)
    assert _take(redis_server.url, "window", GUARDED) == [{"n": 1}]


def test_the_guarded_transport_saves_and_acks_as_kombu_does(
    redis_server: EmbeddedRedis,
) -> None:
    for _ in range(3):
        _publish(redis_server.url, "plain", GUARDED)
    bodies = [_take(redis_server.url, "plain", GUARDED) for _ in range(3)]
    assert bodies == [[{"n": 1}]] * 3
    client = Redis.from_url(redis_server.url)
    counts = (client.llen("plain"), client.hlen("unacked"), client.llen("unacked_inflight"))
    assert counts == (0, 0, 0)


def test_rabbitmq_returns_the_unacknowledged_message_to_its_queue() -> None:
    with RabbitVhost() as vhost:
        name = f"window-{uuid.uuid4().hex[:6]}"
        _publish(vhost.url, name)
        _consume_and_die(vhost.url, name)
        assert _take(vhost.url, name) == [{"n": 1}]
