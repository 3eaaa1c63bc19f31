"""Prometheus metrics of the queue itself (Flower's /metrics covers Celery's workers).

Gauges (depth per status, age of the oldest PENDING item) are read from PostgreSQL when
scraped. Counters (items completed / retried / failed, writer requests, 429 answers) are kept
in Redis, so that every worker process adds to the same totals; if Redis is unreachable a
count is dropped, never the work.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler
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


class QueueCollector:
    """Collects the queue's gauges (from PostgreSQL) and counters (from Redis) on scrape."""

    def collect(self) -> Iterator[Any]:
        """Yield the metric families."""
        from syncqueue_tasks.queue import get_queue_stats

        stats = get_queue_stats()
        depth = GaugeMetricFamily(
            "syncqueue_items", "Items in sync_queue per status", labels=["status"]
        )
        for status in ("pending", "processing", "completed", "failed"):
            depth.add_metric([status.upper()], stats[status])
        yield depth
        yield GaugeMetricFamily(
            "syncqueue_oldest_pending_age_seconds",
            "Age of the oldest PENDING item",
            value=stats["oldest_pending_age_seconds"],
        )
        for name, value in read_counters().items():
            yield CounterMetricFamily(f"syncqueue_{name}", COUNTERS[name], value=value)
        yield from _sheet_gauges()
        yield from _verify_gauges()


def _sheet_gauges() -> Iterator[Any]:
    usage = read_sheet_usage()
    cells = GaugeMetricFamily(
        "syncqueue_sheets_cells",
        "Cells in a spreadsheet's grids (all tabs)",
        labels=["spreadsheet"],
    )
    limit = GaugeMetricFamily(
        "syncqueue_sheets_cells_limit", "Cells a spreadsheet may hold", labels=["spreadsheet"]
    )
    for sid, (used, most) in sorted(usage.items()):
        cells.add_metric([sid], used)
        limit.add_metric([sid], most)
    yield cells
    yield limit


def _verify_gauges() -> Iterator[Any]:
    from syncqueue_tasks.verify import last_result

    result = last_result()
    findings = GaugeMetricFamily(
        "syncqueue_verify_last_findings",
        "Differences the latest verify found, per model and kind",
        labels=["model", "kind"],
    )
    for model in (result or {}).get("models", []):
        for kind, n in model["counts"].items():
            findings.add_metric([model["model"], kind], n)
    yield findings
    if result:
        yield GaugeMetricFamily(
            "syncqueue_verify_last_finished_timestamp_seconds",
            "When the latest verify finished (Unix time)",
            value=result["finished_at"],
        )


def registry() -> CollectorRegistry:
    """A registry holding only the queue's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(QueueCollector())
    return reg


def render() -> bytes:
    """The Prometheus text exposition of the queue's metrics."""
    return generate_latest(registry())


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the server."""
    handler = MetricsHandler.factory(registry())
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="syncqueue-metrics", daemon=True).start()
    return server
