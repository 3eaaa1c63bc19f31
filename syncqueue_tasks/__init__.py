"""syncqueue-tasks: database changes, queued in PostgreSQL, written to a spreadsheet by Celery.

Layers (README, "Architecture"): ``core``, ``store``, ``writers``, ``capture``, ``celery``,
``ops`` (with ``dashboard``), ``local``; next to them the configuration (``settings``,
``redis_client``, ``counters``). The former flat module paths stay importable: ``_moved``.
"""

from syncqueue_tasks import _moved
from syncqueue_tasks.core.errors import EnqueueError, SyncQueueError, ValidationError
from syncqueue_tasks.core.items import QueueItem, QueueStatus, SyncAction

_moved.install()

__all__ = [
    "EnqueueError",
    "QueueItem",
    "QueueStatus",
    "SyncAction",
    "SyncQueueError",
    "ValidationError",
]
