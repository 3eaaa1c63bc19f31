"""Google's per-user request quota for the fake Sheets API: a rolling window per account and kind.

A request refused by the quota is answered 429 (Google's body, no ``Retry-After`` header by
default) and is not counted against the window. ``time_factor`` runs the quota clock faster
than real time: with 30, a 60 s window passes in 2 real seconds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_METRIC = {
    "read": ("Read requests", "ReadRequestsPerMinutePerUser", "read_requests"),
    "write": ("Write requests", "WriteRequestsPerMinutePerUser", "write_requests"),
}


@dataclass
class Quota:
    """Limits per account (a service account is one user) and the quota clock."""

    reads_per_window: int = 60
    writes_per_window: int = 60
    window: float = 60.0  # quota seconds
    time_factor: float = 1.0  # quota seconds per real second
    retry_after_header: bool = False  # Google sends none for Sheets; True adds one (tests)
    clock: Callable[[], float] = time.monotonic
    project_number: str = "000000000000"
    _log: dict[tuple[str, str], deque[float]] = field(default_factory=dict, repr=False)
    _counts: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def now(self) -> float:
        """The quota clock, in quota seconds."""
        return self.clock() * self.time_factor

    def admit(self, account: str, kind: str) -> float | None:
        """Count one ``kind`` ("read"/"write") request: None if admitted, else the quota
        seconds until the oldest request in the window leaves it."""
        limit = self.reads_per_window if kind == "read" else self.writes_per_window
        with self._lock:
            now = self.now()
            log = self._log.setdefault((account, kind), deque())
            while log and log[0] <= now - self.window:
                log.popleft()
            counts = self._counts.setdefault(account, {})
            if len(log) >= limit:
                counts[f"{kind}_429"] = counts.get(f"{kind}_429", 0) + 1
                return log[0] + self.window - now
            log.append(now)
            counts[kind] = counts.get(kind, 0) + 1
            return None

    def counts(self, account: str | None = None) -> dict[str, int]:
        """Admitted requests and 429s per kind (``read``, ``write``, ``read_429``,
        ``write_429``), for one account or summed over all."""
        with self._lock:
            chosen = [self._counts.get(account, {})] if account else list(self._counts.values())
            keys = ("read", "write", "read_429", "write_429")
            return {k: sum(c.get(k, 0) for c in chosen) for k in keys}

    def reset(self) -> None:
        """Forget the windows and the counters."""
        with self._lock:
            self._log.clear()
            self._counts.clear()

    def error(self, kind: str) -> dict[str, Any]:
        """The 429 body Google sends when the per-user quota of ``kind`` is exhausted."""
        metric, limit, name = _METRIC[kind]
        consumer = f"project_number:{self.project_number}"
        return {
            "code": 429,
            "message": (
                f"Quota exceeded for quota metric '{metric}' and limit '{metric} per minute "
                f"per user' of service 'sheets.googleapis.com' for consumer '{consumer}'."
            ),
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "consumer": f"projects/{self.project_number}",
                        "quota_limit": limit,
                        "quota_metric": f"sheets.googleapis.com/{name}",
                        "service": "sheets.googleapis.com",
                    },
                }
            ],
        }
