"""Alembic operations for apps that version their schema: ``op.capture_table`` and
``op.remove_capture``.

Import this module once (in ``env.py``, or in the migration) to register them::

    import syncqueue_tasks.capture.alembic_ops  # noqa: F401

    def upgrade():
        op.capture_table("public.requests", model="Request", columns=["title", "status"])

    def downgrade():
        op.remove_capture("public.requests")

``capture_table`` installs (or upgrades) the triggers exactly as ``syncqueue capture add``
does, in the migration's transaction; it reads the table's column types through the
migration's connection, so it runs online only (``alembic upgrade --sql`` cannot generate it).
A later migration calling it again upgrades the triggers to the package's current version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic.operations import MigrateOperation, Operations

from syncqueue_tasks.capture import triggers
from syncqueue_tasks.capture.errors import CaptureError


@Operations.register_operation("capture_table")
class CaptureTableOp(MigrateOperation):
    """Install the capture triggers of a table."""

    def __init__(
        self, table: str, model: str, key: str | None, columns: Sequence[str] | None
    ) -> None:
        self.table, self.model, self.key, self.columns = table, model, key, columns

    @classmethod
    def capture_table(
        cls,
        operations: Operations,
        table: str,
        model: str,
        *,
        key: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> Any:
        """Capture ``table``'s changes as changes of ``model`` (see ``triggers.install``)."""
        return operations.invoke(cls(table, model, key, columns))

    def reverse(self) -> RemoveCaptureOp:
        return RemoveCaptureOp(self.table)


@Operations.register_operation("remove_capture")
class RemoveCaptureOp(MigrateOperation):
    """Remove the capture triggers of a table."""

    def __init__(self, table: str) -> None:
        self.table = table

    @classmethod
    def remove_capture(cls, operations: Operations, table: str) -> Any:
        """Stop capturing ``table`` (see ``triggers.remove``)."""
        return operations.invoke(cls(table))


@Operations.implementation_for(CaptureTableOp)
def _capture_table(operations: Operations, operation: CaptureTableOp) -> None:
    triggers.install(
        _bind(operations),
        operation.table,
        operation.model,
        key=operation.key,
        columns=operation.columns,
    )


@Operations.implementation_for(RemoveCaptureOp)
def _remove_capture(operations: Operations, operation: RemoveCaptureOp) -> None:
    triggers.remove(_bind(operations), operation.table)


def _bind(operations: Operations) -> Any:
    if operations.migration_context.as_sql:
        raise CaptureError(
            "op.capture_table reads the table's column types from the database: run the "
            "migration online (not with --sql)"
        )
    return operations.get_bind()
