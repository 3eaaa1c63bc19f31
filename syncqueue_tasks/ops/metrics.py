"""Prometheus metrics of the queue itself (Flower's /metrics covers Celery's workers).

Gauges (depth per status, age of the oldest PENDING item) are read from PostgreSQL when
scraped; counters come from Redis (``counters``, where the workers and writers count).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from syncqueue_tasks.counters import (  # re-exported: metrics.count & co. are public
    COUNTERS,
    count,
    read_counters,
    read_sheet_usage,
    record_outcomes,
    record_sheet_usage,
)

__all__ = [
    "COUNTERS",
    "QueueCollector",
    "count",
    "read_counters",
    "read_sheet_usage",
    "record_outcomes",
    "record_sheet_usage",
    "registry",
    "render",
    "serve",
]


class QueueCollector:
    """Collects the queue's gauges (from PostgreSQL) and counters (from Redis) on scrape."""

    def collect(self) -> Iterator[Any]:
        """Yield the metric families."""
        from syncqueue_tasks.store.queue import get_queue_stats

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
    from syncqueue_tasks.celery.verify import last_result

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
