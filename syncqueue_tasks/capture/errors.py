"""The one error type of change capture."""

from __future__ import annotations

from syncqueue_tasks.core.errors import SyncQueueError


class CaptureError(SyncQueueError):
    """Capture cannot do what was asked (a bad ``track`` call, a statement it cannot capture,
    a backfill that cannot resume); raised before anything is written or enqueued."""
