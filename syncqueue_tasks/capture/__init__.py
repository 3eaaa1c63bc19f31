"""Change capture: changes of tracked tables reach the queue without hand-written enqueues.

- ``track(OrmClass, model=..., fields=..., key=...)``: every flush and every bulk statement
  of the class enqueues its changes in the same transaction (``orm``, ``bulk``).
- ``suppressed(session)``: nothing written inside the block is enqueued (``suppress``).
- ``backfill(bind, source)``: enqueue the current state of every row (``backfill``);
  ``table_source(...)`` describes a table no ORM class tracks (triggers, the CLI).
- ``tracked_fields(model)``: the fields in declared order; ``values``: the JSON table.
- ``triggers``: PostgreSQL trigger capture of a table (``install``, ``installed``, ``remove``,
  ``upgrade``, ``install_sql``); ``alembic_ops``: the same as Alembic operations.
"""

from syncqueue_tasks.capture import bulk as _bulk  # noqa: F401  (installs do_orm_execute)
from syncqueue_tasks.capture.backfill import BackfillReport, backfill
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.orm import track, untrack
from syncqueue_tasks.capture.progress import Progress, ProgressPrinter
from syncqueue_tasks.capture.registry import Tracked, tracked_fields
from syncqueue_tasks.capture.suppress import GUC, suppressed
from syncqueue_tasks.capture.tables import table_source

__all__ = [
    "GUC",
    "BackfillReport",
    "CaptureError",
    "Progress",
    "ProgressPrinter",
    "Tracked",
    "backfill",
    "suppressed",
    "table_source",
    "track",
    "tracked_fields",
    "untrack",
]
