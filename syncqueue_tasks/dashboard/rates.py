"""Per-minute rates from the queue's Redis counters (``syncqueue_tasks.ops.metrics``).

The counters (completed, retried, failed, writer requests, 429 answers) are totals that every
worker process adds to. The dashboard samples them every ``SAMPLE_SECONDS`` and keeps the
first sample of each minute in one Redis hash (field: the minute, value: the totals), kept
for ``KEEP_MINUTES``. A minute's rate is the difference between its sample and the next
minute's. Why the counters and not ``sync_queue``'s timestamps: a retried attempt leaves no
timestamp in the table, and a dead letter that was retried or discarded since leaves no
FAILED row; the counters count events, the same ones Prometheus sees. The price: minutes when
no dashboard was sampling (or Redis restarted and the totals fell) have no rate, and are shown
as gaps, never as zeros. Samples live in Redis, so they survive a restart of the dashboard and
are shared by several dashboards (the first sample of a minute wins).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from syncqueue_tasks.counters import COUNTERS, read_counters
from syncqueue_tasks.redis_client import get_redis, key

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 10.0
WINDOW_MINUTES = 60
KEEP_MINUTES = 2 * WINDOW_MINUTES


def samples_key() -> str:
    """The Redis hash holding one sample of the counters per minute."""
    return key("dashboard:counter-samples")


def sample(now: float) -> None:
    """Record the counters as the sample of the minute of ``now``, unless it has one."""
    minute = int(now // 60)
    try:
        redis = get_redis()
        if not redis.hsetnx(samples_key(), str(minute), json.dumps(read_counters())):
            return
        old = [f for f in redis.hkeys(samples_key()) if int(f) < minute - KEEP_MINUTES]
        pipe = redis.pipeline(transaction=False)
        if old:
            pipe.hdel(samples_key(), *old)
        pipe.expire(samples_key(), KEEP_MINUTES * 60)
        pipe.execute()
    except RedisError as exc:
        log.debug("counter sample dropped: %s", type(exc).__name__)


@dataclass(frozen=True)
class Rates:
    """Per counter, its count in each of the last ``WINDOW_MINUTES`` whole minutes, oldest
    first (None: no rate known for that minute)."""

    per_minute: dict[str, list[int | None]]

    def last_hour(self, name: str) -> int | None:
        """The counter's total over the window (None: no minute of it is known)."""
        known = [v for v in self.per_minute[name] if v is not None]
        return sum(known) if known else None


def rates(now: float) -> Rates:
    """Per-minute rates over the last ``WINDOW_MINUTES`` whole minutes before ``now``."""
    current = int(now // 60)
    try:
        raw: Mapping[Any, Any] = get_redis().hgetall(samples_key())
    except RedisError as exc:
        log.debug("counter samples unreadable: %s", type(exc).__name__)
        raw = {}
    samples = {int(minute): json.loads(totals) for minute, totals in raw.items()}
    per_minute: dict[str, list[int | None]] = {name: [] for name in COUNTERS}
    for minute in range(current - WINDOW_MINUTES, current):
        start, end = samples.get(minute, {}), samples.get(minute + 1, {})
        for name, values in per_minute.items():
            delta = end[name] - start[name] if name in start and name in end else None
            values.append(delta if delta is not None and delta >= 0 else None)  # < 0: a reset
    return Rates(per_minute)
