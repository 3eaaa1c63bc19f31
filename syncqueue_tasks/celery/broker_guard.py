"""kombu's Redis transport, guarded: a worker survives malformed messages and Redis restarts.

**Malformed messages.**
kombu's Redis transport pops a message off the queue's list (BRPOP), decodes it as JSON and
builds a kombu ``Message`` from it before any Celery code runs. Bytes that are not JSON, or JSON
that is not an envelope (not an object, no ``properties`` or ``delivery_tag``, headers that are
not a mapping, a body that does not decode), raise out of the event loop: the worker stops.

Here such a message is logged once (sanitized, bounded, no traceback) and dropped. It has been
popped already and is never recorded in the ``unacked`` hash, so nothing redelivers it; the
messages behind it are delivered as usual.

**Redis restarts.** When the worker loses the connection, Celery closes it twice: once in
``Connection.collect()``, which detaches the transport (``transport.client = None``) after a
close that failed half-way (reading the pending BRPOP reply raised), then with
``connection.close()``, whose channel close restores the unacknowledged messages and, to
reach Redis, rebuilds the connection pool from ``transport.client``: ``AttributeError:
'NoneType' object has no attribute 'hostname'``, which Celery calls an "Unrecoverable error"
and the worker exits (kombu 5.7.0 with redis-py 8.x, and earlier versions alike). Here each
channel keeps the connection parameters it was made with, so that close restores the
messages (or fails with a connection error, which Celery expects: they then stay in the
``unacked`` hash until the visibility timeout) and the worker reconnects.

**No message lost between the pop and the unacked hash.** kombu takes a message with
``BRPOP`` (Redis removes it from the list) and only then saves it in the ``unacked`` hash
(``QoS.append``, a second round trip). A worker killed in between, a Redis shutdown that
persisted the pop but never sent the reply, a reply read after the connection died, or a
reply kombu keeps unread in the socket while the worker has no free slot ("paused BRPOP"):
the message is in neither place, and nothing ever redelivers it. Here, when a channel
consumes one list (one queue, ``priority_steps`` ``[0]``; Redis >= 6.2), it takes messages
with ``BLMOVE`` into an in-flight list instead, and removes a message from there in the same
``MULTI`` that saves it as unacknowledged. The periodic ``restore_visible`` sweep (under
kombu's mutex) puts back on its queue any message that has stayed in the in-flight list for
a visibility timeout: it is redelivered, never lost. Otherwise kombu's ``BRPOP`` is used.

``celery_config`` selects this transport (``broker_transport``) for a ``redis://`` broker URL.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils import encoding as kombu_encoding
from kombu.utils import json as kombu_json
from redis.exceptions import RedisError

from syncqueue_tasks.core.errors import sanitize_error

log = logging.getLogger(__name__)

# kombu's functions and methods are not annotated. Its helpers are used through these typed
# names; the calls to the methods this module extends carry
# ``# type: ignore[no-untyped-call, unused-ignore]`` (an error under ``mypy --strict`` only).
bytes_to_str: Callable[[bytes | str], str] = kombu_encoding.bytes_to_str
dumps: Callable[[object], str] = kombu_json.dumps
loads: Callable[[str], Any] = kombu_json.loads

_EXCERPT = 200  # characters of a dropped message quoted in its log record
_LOG_LIMIT = 500

# Envelope fields that kombu (and Celery after it) expect to be text when present.
_TEXT_FIELDS = ("body", "content-type", "content-encoding")


def envelope_problem(raw: object) -> str | None:
    """What makes ``raw`` (a decoded message) unusable as a kombu envelope; None if nothing."""
    if not isinstance(raw, dict):
        return f"not a JSON object but {type(raw).__name__}"
    properties = raw.get("properties")
    if not isinstance(properties, dict):
        return "properties is not a mapping"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "properties.delivery_tag is missing or not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(
        isinstance(info.get(key), str) for key in ("exchange", "routing_key")
    ):
        return "properties.delivery_info has no exchange and routing_key strings"
    if not isinstance(properties.get("body_encoding"), str | None):
        return "properties.body_encoding is not a string"
    if not isinstance(raw.get("headers"), dict | None):
        return "headers is not a mapping"
    for field in _TEXT_FIELDS:
        if not isinstance(raw.get(field), str | None):
            return f"{field} is not a string"
    return None


# Put an orphaned in-flight message back on its queue, only if it is still in flight (another
# worker's sweep may have done it already): atomic, so it is never in neither list.
_RESTORE_ORPHAN = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def _log_dropped(problem: str, excerpt: str) -> None:
    text = f"{problem}; message: {excerpt[:_EXCERPT]!r}" if excerpt else problem
    log.error("dropped a malformed message from the broker: %s", sanitize_error(text, _LOG_LIMIT))


class GuardedQoS(kombu_redis.QoS):
    """kombu's ack emulation, plus the in-flight list (see the module's docstring)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        """Save the message as unacknowledged and, in the same MULTI, take it out of the
        in-flight list (when it came through one)."""
        item = self.channel.take_inflight_item()
        if item is None:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call, unused-ignore]
            return
        info = message.delivery_info
        record = dumps([message._raw, info["exchange"], info["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, record)
            pipe.lrem(self.channel.inflight_key, 1, item)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call, unused-ignore]

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's sweep of the unacked hash, then the same for the in-flight list."""
        super().restore_visible(start, num, interval)  # type: ignore[no-untyped-call, unused-ignore]
        if (self._vrestore_count - 1) % (interval or 1):
            return  # kombu's throttle: this call did not sweep
        with self.channel.conn_or_acquire() as client:
            try:
                with kombu_redis.Mutex(
                    client, self.unacked_mutex_key + "_inflight", self.unacked_mutex_expire
                ):
                    self._restore_orphans(client)
            except kombu_redis.MutexHeld:
                pass

    def _restore_orphans(self, client: Any) -> None:
        """Requeue what stayed in flight for a visibility timeout (its worker never saved it).

        A list has no timestamps: each sweep notes when it first saw an item (in a hash next
        to the list, by digest), and a later sweep restores the items seen long enough ago.
        """
        inflight, seen_key = self.channel.inflight_key, self.channel.inflight_key + "_seen"
        items = client.lrange(inflight, 0, -1)
        seen = {bytes_to_str(k): float(v) for k, v in client.hgetall(seen_key).items()}
        now = time.time()
        live = set()
        for item in items:
            digest = hashlib.sha1(item).hexdigest()
            live.add(digest)
            first = seen.get(digest)
            if first is None:
                client.hset(seen_key, digest, now)
            elif now - first >= self.visibility_timeout:
                self._restore_orphan(client, item)
                live.discard(digest)
        gone = [digest for digest in seen if digest not in live]
        if gone:
            client.hdel(seen_key, *gone)

    def _restore_orphan(self, client: Any, item: bytes) -> None:
        try:
            payload = loads(bytes_to_str(item))
            info = payload["properties"]["delivery_info"]
            queues = self.channel._lookup(info["exchange"], info["routing_key"])
        except Exception:  # not a message any more: nothing to redeliver it to
            client.lrem(self.channel.inflight_key, 1, item)
            return
        for queue in sorted(queues)[:1]:  # a message taken from a queue is bound to one
            key = self.channel._q_for_pri(queue, self.channel._get_message_priority(payload))
            if client.eval(_RESTORE_ORPHAN, 2, self.channel.inflight_key, key, item):
                log.warning("restored a message its worker took but never saved (queue %s)", queue)


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, with a guard between the popped bytes and the consumer."""

    QoS = GuardedQoS

    #: Set once a decoded message reaches a consumer callback: an error raised after that is
    #: the consumer's (it propagates as before), not a malformed message's.
    _handed_over = False
    #: The connection parameters this channel was made with (sync, async), kept for its close.
    _saved_connparams: dict[bool, dict[str, Any]] | None = None
    #: The queue of the BLMOVE in flight (None: a BRPOP, or nothing), and the bytes it moved.
    _moving_from: str | None = None
    _inflight_item: bytes | None = None
    _server_has_blmove: bool | None = None

    @property
    def inflight_key(self) -> str:
        """The list messages are moved to while they are delivered (next to ``unacked``)."""
        return f"{self.unacked_key}_inflight"

    def take_inflight_item(self) -> bytes | None:
        """The bytes of the message being delivered, if it came through the in-flight list
        (once: the caller removes them from the list)."""
        item, self._inflight_item = self._inflight_item, None
        return item

    def _forget_inflight_item(self) -> None:
        """A delivered message no consumer saved (dropped as malformed): out of the list."""
        item = self.take_inflight_item()
        if item is not None:
            with self.conn_or_acquire() as client:
                client.lrem(self.inflight_key, 1, item)

    def _can_move(self, queues: list[str]) -> bool:
        if len(queues) != 1 or len(self.priority_steps) != 1 or self.global_keyprefix:
            return False
        if self._server_has_blmove is None:
            with self.conn_or_acquire() as client:
                version = str(client.info("server").get("redis_version", "0"))
            self._server_has_blmove = tuple(int(p) for p in version.split(".")[:2]) >= (6, 2)
        return self._server_has_blmove

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Ask for the next message: BLMOVE into the in-flight list when this channel
        consumes one list, else kombu's BRPOP."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues or not self._can_move(queues):
            self._moving_from = None
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call, unused-ignore]
            return
        key = self._q_for_pri(queues[0], self.priority_steps[0])  # type: ignore[no-untyped-call, unused-ignore]
        self._moving_from = queues[0]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]
        wait = self.brpop_timeout if timeout is None else timeout
        self.client.connection.send_command(
            "BLMOVE", key, self.inflight_key, "RIGHT", "LEFT", wait or 0
        )

    def _move_read(self, **options: Any) -> bool:
        """kombu's ``_brpop_read``, for a BLMOVE reply."""
        queue = self._moving_from
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            self._inflight_item = item
            self.connection._deliver(loads(bytes_to_str(item)), queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._moving_from = None
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call, unused-ignore]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's parameters, computed once: a channel closed after its transport was
        detached from the connection can still reach Redis to restore its messages."""
        if self._saved_connparams is None:
            self._saved_connparams = {}
        if asynchronous not in self._saved_connparams:
            params = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call, unused-ignore]
            self._saved_connparams[asynchronous] = params
        return dict(self._saved_connparams[asynchronous])

    def basic_consume(
        self,
        queue: str,
        no_ack: bool,
        callback: Callable[[Any], Any],
        consumer_tag: str,
        **kwargs: Any,
    ) -> Any:
        """Consume as kombu does, but build the ``Message`` only from a valid envelope."""
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]

        def on_raw_message(raw: object) -> Any:
            self._handed_over = True
            message = self._message_or_none(raw)
            if message is None:
                self._forget_inflight_item()
                return None
            if no_ack:
                self._forget_inflight_item()
            else:
                self.qos.append(message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = on_raw_message
        return result

    def _message_or_none(self, raw: object) -> Any:
        """The kombu ``Message`` for ``raw``, or None (logged) when it is not an envelope."""
        problem = envelope_problem(raw)
        if problem is None:
            try:
                return self.Message(raw, channel=self)  # type: ignore[no-untyped-call, unused-ignore]
            except Exception as exc:  # a body that does not decode, an unknown body_encoding
                problem = sanitize_error(exc)
        try:
            excerpt = dumps(raw)
        except Exception:
            excerpt = ""
        _log_dropped(problem, excerpt)
        return None

    def _brpop_read(self, **options: Any) -> Any:
        """Read one BRPOP reply; a message that is not JSON is logged and dropped."""
        self._handed_over = False
        try:
            if self._moving_from is not None:
                return self._move_read(**options)
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call, unused-ignore]
        except (
            Empty,
            RedisError,
            *self.connection.connection_errors,
            *self.connection.channel_errors,
        ):
            raise  # no message (yet), or trouble with the connection: kombu handles these
        except Exception as exc:
            if self._handed_over:  # raised by the consumer, not by decoding the message
                raise
            # json's errors carry the text they failed on; others (RecursionError, ...) do not.
            _log_dropped(f"not JSON ({sanitize_error(exc)})", str(getattr(exc, "doc", "")))
            self._forget_inflight_item()
            return True


class GuardedRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`GuardedChannel`."""

    Channel = GuardedChannel
