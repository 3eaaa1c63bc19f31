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

``celeryconfig`` selects this transport (``broker_transport``) for a ``redis://`` broker URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps
from redis.exceptions import RedisError

from syncqueue_tasks.errors import sanitize_error

log = logging.getLogger(__name__)

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


def _log_dropped(problem: str, excerpt: str) -> None:
    text = f"{problem}; message: {excerpt[:_EXCERPT]!r}" if excerpt else problem
    log.error("dropped a malformed message from the broker: %s", sanitize_error(text, _LOG_LIMIT))


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, with a guard between the popped bytes and the consumer."""

    #: Set once a decoded message reaches a consumer callback: an error raised after that is
    #: the consumer's (it propagates as before), not a malformed message's.
    _handed_over = False
    #: The connection parameters this channel was made with (sync, async), kept for its close.
    _saved_connparams: dict[bool, dict[str, Any]] | None = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's parameters, computed once: a channel closed after its transport was
        detached from the connection can still reach Redis to restore its messages."""
        if self._saved_connparams is None:
            self._saved_connparams = {}
        if asynchronous not in self._saved_connparams:
            params = super()._connparams(asynchronous=asynchronous)
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
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

        def on_raw_message(raw: object) -> Any:
            self._handed_over = True
            message = self._message_or_none(raw)
            if message is None:
                return None
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = on_raw_message
        return result

    def _message_or_none(self, raw: object) -> Any:
        """The kombu ``Message`` for ``raw``, or None (logged) when it is not an envelope."""
        problem = envelope_problem(raw)
        if problem is None:
            try:
                return self.Message(raw, channel=self)
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
            return super()._brpop_read(**options)
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
            return True


class GuardedRedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`GuardedChannel`."""

    Channel = GuardedChannel
