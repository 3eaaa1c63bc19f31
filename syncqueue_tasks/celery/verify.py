"""``verify``: compare each model's rows at the destination with the records' synced states.

:func:`verify` asks the configured writer (Google Sheets; the local workbook) to read each
model's tab once and compare it (``verify_compare``); with ``repair`` it rewrites what differs,
within the quota. The latest result is kept in Redis (``<queue>:verify``, JSON) where
``syncqueue verify``, the metrics endpoint and a dashboard read it: it is derived data, made
again by the next run, so a store that a restart may lose is enough, and no table is needed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from syncqueue_tasks import counters
from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.redis_client import get_redis, key
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store.synced import synced_states
from syncqueue_tasks.writers.verify_compare import ModelReport

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    """Every model's report, and when the run finished (Unix time)."""

    reports: list[ModelReport] = field(default_factory=list)
    finished_at: float = 0.0
    repair: bool = False

    @property
    def findings(self) -> int:
        """Findings of every model."""
        return sum(len(r.findings) for r in self.reports)

    @property
    def unresolved(self) -> int:
        """Findings left: all of them, or after a repair those it could not fix."""
        if not self.repair:
            return self.findings
        return sum(r.unrepaired + r.counts()["orphan"] + r.counts()["column"] for r in self.reports)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "finished_at": self.finished_at,
            "repair": self.repair,
            "findings": self.findings,
            "models": [r.to_json() for r in self.reports],
        }


def verify(model: str | None = None, *, repair: bool = False, writer: Any = None) -> VerifyResult:
    """Verify ``model`` (default: every ``SYNCQUEUE_MODELS``) at the configured writer's
    destination; with ``repair``, rewrite what differs. The result is also stored for
    :func:`last_result` and the metrics."""
    if writer is None:
        from syncqueue_tasks.celery.batch import process_writer

        writer = process_writer()
    if not callable(getattr(writer, "verify_model", None)):
        raise ConfigurationError(f"the writer {type(writer).__name__} cannot be verified")
    models = [model] if model else sorted(get_settings().limits.models)
    result = VerifyResult(repair=repair)
    for name in models:
        report = writer.verify_model(name, lambda n=name: synced_states(n), repair=repair)
        result.reports.append(report)
        log.info(
            "verify %s (%s): %d row(s), %d record(s), %s; %d repaired",
            name,
            report.destination,
            report.rows,
            report.records,
            ", ".join(f"{n} {k}" for k, n in report.counts().items() if n) or "no findings",
            report.repaired,
        )
    result.finished_at = time.time()
    _store(result)
    return result


def _store(result: VerifyResult) -> None:
    try:
        get_redis().set(key("verify"), json.dumps(result.to_json()))
    except RedisError as exc:
        log.warning("verify result not stored: %s", type(exc).__name__)
    counters.count("verify_findings", result.findings)


def last_result() -> dict[str, Any] | None:
    """The latest stored result (as :meth:`VerifyResult.to_json` made it), or None."""
    try:
        raw = get_redis().get(key("verify"))
    except RedisError:
        return None
    return json.loads(raw) if raw else None
