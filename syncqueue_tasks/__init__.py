"""syncqueue-tasks: database changes, queued in PostgreSQL, written to a spreadsheet by Celery."""

from syncqueue_tasks.errors import EnqueueError, SyncQueueError, ValidationError
from syncqueue_tasks.models import QueueItem, QueueStatus, SyncAction

__all__ = [
    "EnqueueError",
    "QueueItem",
    "QueueStatus",
    "SyncAction",
    "SyncQueueError",
    "ValidationError",
]
