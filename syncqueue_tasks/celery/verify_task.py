"""The Celery task ``syncqueue.verify``: ``verify`` on a beat schedule (off by default:
``SYNCQUEUE_VERIFY_EVERY``; ``SYNCQUEUE_VERIFY_REPAIR`` makes it repair too)."""

from __future__ import annotations

from typing import Any

from syncqueue_tasks.celery.setup import syncqueue_task, use_package_app_unless_own
from syncqueue_tasks.celery.verify import verify


@syncqueue_task("syncqueue.verify")
def verify_task(repair: bool = False) -> dict[str, Any]:
    """Verify every model (and repair when asked); the result is stored for the metrics."""
    result = verify(repair=repair)
    return {"findings": result.findings, "unresolved": result.unresolved}


use_package_app_unless_own()
