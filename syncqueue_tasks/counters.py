"""The queue's counters, kept in Redis so that every worker process adds to the same totals.

Items completed / retried / failed, writer requests, 429 answers, conflicts, verify findings;
and each spreadsheet's cell usage as the writers last saw it. If Redis is unreachable a count
is dropped, never the work. ``metrics`` exports them to Prometheus; the dashboard charts them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.exceptions import RedisError

from syncqueue_tasks.redis_client import get_redis, key

log = logging.getLogger(__name__)

COUNTERS = {
    "completed": "Items written and marked COMPLETED",
    "retried": "Failed attempts that went back to PENDING with a backoff",
    "failed": "Items parked as FAILED (dead letters)",
    "writer_requests": "Requests the writer sent to its destination (e.g. Sheets API calls)",
    "writer_throttled": "Answers that asked the writer to slow down (HTTP 429)",
    "writer_conflicts": "Owned cells a person edited since the writer last wrote them",
    "writer_astray": "Writes that met rows or columns moved by a person, repaired at once",
    "verify_findings": "Differences verify found between the destination and the synced states",
}


def count(name: str, amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` (one of ``COUNTERS``)."""
    if amount <= 0:
        return
    try:
        get_redis().hincrby(key("metrics"), name, amount)
    except RedisError as exc:
        log.debug("metrics counter %s dropped: %s", name, type(exc).__name__)


def record_outcomes(*, completed: int, retried: int, failed: int) -> None:
    """Count the outcomes of one batch, in one round trip."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        for name, amount in (("completed", completed), ("retried", retried), ("failed", failed)):
            if amount > 0:
                pipe.hincrby(key("metrics"), name, amount)
        pipe.execute()
    except RedisError as exc:
        log.debug("metrics outcomes dropped: %s", type(exc).__name__)


def record_sheet_usage(spreadsheet: str, cells: int, limit: int) -> None:
    """Note how many cells a spreadsheet's grids hold (of ``limit``), as last seen."""
    try:
        get_redis().hset(key("sheets_cells"), spreadsheet, json.dumps([cells, limit]))
    except RedisError as exc:
        log.debug("sheet usage dropped: %s", type(exc).__name__)


def read_sheet_usage() -> dict[str, tuple[int, int]]:
    """Spreadsheet -> (cells in use, limit), as the writers last saw them."""
    try:
        raw: dict[Any, Any] = get_redis().hgetall(key("sheets_cells"))
    except RedisError:
        return {}
    out = {}
    for sid, value in raw.items():
        cells, limit = json.loads(value)
        out[sid.decode() if isinstance(sid, bytes) else sid] = (int(cells), int(limit))
    return out


def read_counters() -> dict[str, int]:
    """Current totals of every counter (0 when never counted or Redis is unreachable)."""
    try:
        raw: dict[Any, Any] = get_redis().hgetall(key("metrics"))
    except RedisError:
        raw = {}
    values = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
    return {name: values.get(name, 0) for name in COUNTERS}
