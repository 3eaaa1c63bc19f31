"""Planning one batch for the Sheets writer: records -> cell writes, new rows, row deletions.

Pure bookkeeping, no I/O: the writer reads the tabs, calls :func:`plan_tab` per tab, then
sends the plan's units (each unit is one record's share of a request, so a refused request
can be bisected down to the record at fault).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncqueue_tasks.errors import sanitize_error
from syncqueue_tasks.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.records import RecordKey, RecordWrite
from syncqueue_tasks.settings import Settings
from syncqueue_tasks.writers.rules import DELETED_COLUMN, RowAction, plan_row
from syncqueue_tasks.writers.sheets_layout import (
    MAX_CELL_CHARS,
    TabLayout,
    cell_value,
    row_range,
    runs,
)


class Reject(Exception):
    """A permanent problem with one record, found while planning (nothing sent for it)."""


@dataclass
class Unit:
    """One record's share of a request: ValueRanges, an appended row, or a row to delete."""

    index: int
    data: list[dict[str, Any]] = field(default_factory=list)
    cells: dict[int, Any] = field(default_factory=dict)
    sheet_id: int = 0
    row: int = 0


@dataclass
class Plan:
    """Everything one batch will send, grouped by request."""

    updates: list[Unit] = field(default_factory=list)
    headers: list[dict[str, Any]] = field(default_factory=list)
    appends: dict[str, list[Unit]] = field(default_factory=dict)
    deletes: list[Unit] = field(default_factory=list)
    grow: dict[str, int] = field(default_factory=dict)  # tab -> columns to add to the grid


_RANK = {OutcomeKind.DONE: 0, OutcomeKind.RETRY: 1, OutcomeKind.FAIL: 2}


class Batch:
    """The records of one ``write`` call and their outcomes so far."""

    def __init__(self, writes: list[RecordWrite]) -> None:
        self.writes = writes
        self.outcomes: dict[int, Outcome] = {}

    def resolve(self, index: int, outcome: Outcome) -> None:
        """Record an outcome; a worse one (fail > retry > done) is never overwritten."""
        current = self.outcomes.get(index)
        if current is None or _RANK[outcome.kind] > _RANK[current.kind]:
            self.outcomes[index] = outcome

    def fill(self, outcome: Outcome) -> None:
        """Give ``outcome`` to every record still unresolved."""
        for index in range(len(self.writes)):
            self.outcomes.setdefault(index, outcome)

    def result(self) -> dict[RecordKey, Outcome]:
        """One outcome per record."""
        self.fill(Outcome.retry("not written"))
        return {w.key: self.outcomes[i] for i, w in enumerate(self.writes)}


def record_cells(fields: Mapping[str, Any], id_name: str) -> dict[str, Any]:
    """A record's fields as header name -> RAW cell value; ``Reject`` if one can't be a cell."""
    out: dict[str, Any] = {}
    for raw_name, value in fields.items():
        name = str(raw_name).strip()  # header cells are read back stripped
        if name in (id_name, DELETED_COLUMN):
            continue
        if not name:
            raise Reject("a field with an empty name cannot be a column")
        cell = cell_value(value)
        if isinstance(cell, str) and len(cell) > MAX_CELL_CHARS:
            raise Reject(f"field {name!r} is longer than {MAX_CELL_CHARS} characters")
        out[name] = cell
    return out


def body_size(value: Any) -> int:
    """Bytes of ``value`` as JSON, serialized the way ``requests`` sends it."""
    return len(json.dumps(value, default=str))


def chunks(units: list[Unit], size: Callable[[Unit], int], limit: int) -> list[list[Unit]]:
    """Greedy split keeping each chunk's body under ``limit`` bytes (an oversized unit alone)."""
    out: list[list[Unit]] = []
    current: list[Unit] = []
    total = 0
    for unit in units:
        n = size(unit) + 2  # ", " between items
        if current and total + n > limit:
            out.append(current)
            current, total = [], 0
        current.append(unit)
        total += n
    if current:
        out.append(current)
    return out


def plan_tab(
    settings: Settings, batch: Batch, layout: TabLayout, indexes: list[int], plan: Plan
) -> None:
    """Turn one tab's records into units of the plan (or outcomes right away)."""
    id_name = settings.id_column
    id_col = layout.column(id_name)
    if id_col is None and not layout.fresh:
        error = f"tab {layout.title!r} has no {id_name!r} column in its header row"
        for i in indexes:
            batch.resolve(i, Outcome.fail(sanitize_error(error)))
        return
    fresh = layout.fresh
    if id_col is None:
        id_col = layout.add_column(id_name)
    for i in indexes:
        try:
            _plan_record(settings, batch, layout, i, id_col, fresh, plan)
        except Reject as reject:
            batch.resolve(i, Outcome.fail(sanitize_error(str(reject))))
    if layout.new_columns:
        plan.headers.extend(layout.header_ranges())
    if layout.width > layout.col_count:
        plan.grow[layout.title] = layout.width - layout.col_count


def _plan_record(
    settings: Settings,
    batch: Batch,
    layout: TabLayout,
    i: int,
    id_col: int,
    fresh: bool,
    plan: Plan,
) -> None:
    """One record: the ``writers.rules`` plan, as cell writes, a new row or row deletions."""
    w = batch.writes[i]
    rows = layout.rows_by_id.get(w.record_id, [])
    target = w.row_hint if w.row_hint in rows else (rows[0] if rows else None)
    row_plan = plan_row(
        w,
        found=target is not None,
        tombstoned=target in layout.tombstoned,
        update_missing=settings.update_missing,
        delete_mode=settings.delete_mode,
    )
    if row_plan.action is RowAction.FAIL:
        raise Reject(row_plan.error)
    if row_plan.action is RowAction.NOTHING:
        batch.resolve(i, Outcome.done())
        return
    if row_plan.action is RowAction.REMOVE:
        plan.deletes.extend(Unit(i, sheet_id=layout.sheet_id, row=r) for r in rows)
        return
    fields = record_cells(row_plan.values, settings.id_column)
    unknown = [k for k, v in fields.items() if v != "" and layout.column(k) is None]
    if unknown and not fresh and settings.unknown_fields == "fail":
        names = ", ".join(repr(k) for k in unknown)
        raise Reject(
            f"{w.model} tab {layout.title!r} has no column for field(s) {names} "
            "(SYNCQUEUE_UNKNOWN_FIELDS=fail)"
        )
    for name in unknown:
        layout.add_column(name)
    cells = {col: v for k, v in fields.items() if (col := layout.column(k)) is not None}
    if row_plan.action is RowAction.TOMBSTONE or row_plan.tombstone or row_plan.revive:
        deleted_col = layout.column(DELETED_COLUMN) or layout.add_column(DELETED_COLUMN)
        cells[deleted_col] = "" if row_plan.revive else True
    if row_plan.action is RowAction.APPEND:
        cells[id_col] = w.record_id
        plan.appends.setdefault(layout.title, []).append(Unit(i, cells=cells))
        return
    if not cells:
        batch.resolve(i, Outcome.done())
        return
    targets = rows if row_plan.action is RowAction.TOMBSTONE else [target or 0]
    data = [
        {"range": row_range(layout.title, row, c, c + len(v) - 1), "values": [v]}
        for row in targets
        for c, v in runs(cells)
    ]
    plan.updates.append(Unit(i, data=data))
