"""Destination rules every spreadsheet writer shares: what to do to a record's row.

Given a ``RecordWrite`` and what the destination holds for the record (a row or not, live or
tombstoned), :func:`plan_row` says what to do; the writer only does the I/O. So the Google
Sheets writer and the workbook writer apply one set of semantics:

- DELETE: tombstone every row holding the id (blank the record's cells, ``_deleted`` TRUE, the
  id stays, so no row moves), or remove them (``SYNCQUEUE_DELETE_MODE=remove``). With no row
  but a record that applying its changes in order would have written, a tombstone row is
  added: the sheet ends the same however the changes were split into batches.
- CREATE: write the row (append it if missing; a CREATE of a record that exists updates it).
- UPDATE: write the changed cells; a record with no live row (none, tombstoned, or deleted
  since it was written) follows ``SYNCQUEUE_UPDATE_MISSING``: ``create`` writes the whole
  record, ``fail`` fails it.
- A row that is added, revived or restarted gets the record's whole state; a live row gets
  only the cells that changed (a person's edits to other cells stay).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from syncqueue_tasks.core.items import SyncAction
from syncqueue_tasks.core.records import RecordWrite

DELETED_COLUMN = "_deleted"


class UpdateMissing(enum.StrEnum):
    """``SYNCQUEUE_UPDATE_MISSING``: an UPDATE of a record with no live row."""

    CREATE = "create"
    FAIL = "fail"


class UnknownFields(enum.StrEnum):
    """``SYNCQUEUE_UNKNOWN_FIELDS``: a field with no column."""

    ADD_COLUMN = "add_column"
    FAIL = "fail"


class DeleteMode(enum.StrEnum):
    """``SYNCQUEUE_DELETE_MODE``: what a DELETE does to the record's rows."""

    TOMBSTONE = "tombstone"
    REMOVE = "remove"


class RowAction(enum.StrEnum):
    """What a writer does to a record's row(s)."""

    NOTHING = "nothing"
    APPEND = "append"  # a new row: the id and ``values`` (``tombstone``: a tombstone row)
    UPDATE = "update"  # write ``values`` into the row (``revive``: clear ``_deleted``)
    TOMBSTONE = "tombstone"  # every row holding the id: blank ``values``, ``_deleted`` TRUE
    REMOVE = "remove"  # delete every row holding the id
    FAIL = "fail"  # permanent: ``error``


@dataclass(frozen=True, slots=True)
class RowPlan:
    """The plan for one record's row. ``values``: field -> value, ``None`` blanks a cell."""

    action: RowAction
    values: dict[str, Any] = field(default_factory=dict)
    revive: bool = False
    tombstone: bool = False
    error: str = ""


def plan_row(
    write: RecordWrite,
    *,
    found: bool,
    tombstoned: bool,
    update_missing: UpdateMissing | str,
    delete_mode: DeleteMode | str,
) -> RowPlan:
    """What to do for ``write``, given whether the destination has a row for the record
    (``found``) and whether that row is tombstoned."""
    if write.action is SyncAction.DELETE:
        if delete_mode == DeleteMode.REMOVE:
            return RowPlan(RowAction.REMOVE if found else RowAction.NOTHING)
        blanks = dict.fromkeys(write.cells)
        if found:
            return RowPlan(RowAction.TOMBSTONE, blanks)
        if write.leaves_row:
            return RowPlan(RowAction.APPEND, tombstone=True)
        return RowPlan(RowAction.NOTHING)
    missing = not found or tombstoned or write.restarted
    if missing and write.action is SyncAction.UPDATE and update_missing == UpdateMissing.FAIL:
        return RowPlan(
            RowAction.FAIL,
            error=f"{write.model} record {write.record_id!r} has no row to update "
            "(SYNCQUEUE_UPDATE_MISSING=fail)",
        )
    if not found:
        return RowPlan(RowAction.APPEND, whole_record(write))
    if missing:
        return RowPlan(RowAction.UPDATE, whole_record(write), revive=tombstoned)
    return RowPlan(RowAction.UPDATE, dict(write.cells))


def whole_record(write: RecordWrite) -> dict[str, Any]:
    """Every field of the record's new state, plus blanks for the fields it no longer has."""
    values = {name: None for name, value in write.cells.items() if value is None}
    values.update(write.state.fields)
    return values
