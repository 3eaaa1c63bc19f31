"""Planning one tab's share of a round: record writes + the tab's layout -> the subrequests of
one atomic ``spreadsheets.batchUpdate``, and what the tab must look like right after it.

Pure bookkeeping, no I/O. What to do to a record's row comes from ``writers.rules.plan_row``;
this module places it: columns by header name (a moved column is followed; a missing, renamed
or duplicated one fails only the records that need it), rows by the id cell.

The request never overwrites a cell it has not meant to: new columns and new rows are
*inserted* (``insertDimension``) after the last header cell / the last row holding an id, then
filled; existing rows get ``updateCells`` for exactly the runs of cells that change (a person's
columns in between are not touched); ``remove`` mode deletes rows highest first. The id cell of
an existing row is never rewritten: after the write it still says whose row was written, which
is what :meth:`TabPlan.misplaced` checks against the answer.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncqueue_tasks.core.records import RecordWrite
from syncqueue_tasks.settings import DestinationConfig, SheetsConfig
from syncqueue_tasks.writers.rules import (
    DELETED_COLUMN,
    DeleteMode,
    RowAction,
    UnknownFields,
    UpdateMissing,
    plan_row,
)
from syncqueue_tasks.writers.sheets.cells import BLANK, Cell, CellTooLong, encode, text
from syncqueue_tasks.writers.sheets.layout import (
    Layout,
    col_letters,
    column_a1,
    header_a1,
    runs,
    trim,
)
from syncqueue_tasks.writers.verify_compare import same

_TRUE = Cell({"boolValue": True}, True)


@dataclass(frozen=True)
class Policy:
    """The settings planning follows."""

    id_column: str = "id"
    update_missing: UpdateMissing = UpdateMissing.CREATE
    delete_mode: DeleteMode = DeleteMode.TOMBSTONE
    unknown_fields: UnknownFields = UnknownFields.ADD_COLUMN
    keep_conflicts: bool = False
    truncate: bool = False
    column_order: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, rules: DestinationConfig, sheets: SheetsConfig) -> Policy:
        """The policy the destination rules and the Sheets config set."""
        return cls(
            rules.id_column,
            UpdateMissing(rules.update_missing),
            DeleteMode(rules.delete_mode),
            UnknownFields(rules.unknown_fields),
            sheets.conflicts == "keep",
            sheets.long_cells == "truncate",
            sheets.columns,
        )


@dataclass(frozen=True)
class Job:
    """One record of a round (``index``: its outcome slot; negative: none). ``checks``: read
    its owned cells first to detect a person's edits; ``verify``: a repair that also makes a
    lost column again and keeps one row per id; ``keep``: fields whose sheet value stays."""

    index: int
    write: RecordWrite
    checks: bool = True
    verify: bool = False
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Conflict:
    """An owned cell a person edited since the package last wrote it."""

    index: int
    record_id: str
    field: str
    kept: bool


@dataclass
class _Check:
    row: int
    name: str
    expected: Any


@dataclass
class _JobPlan:
    index: int
    record_id: str
    rows: dict[int, dict[str, Cell]] = field(default_factory=dict)  # existing row -> cells
    insert: dict[str, Cell] | None = None
    removes: list[int] = field(default_factory=list)
    detach: list[int] = field(default_factory=list)  # rows whose id (and owned cells) go
    new_names: list[str] = field(default_factory=list)
    checks: list[_Check] = field(default_factory=list)


class Reject(Exception):
    """A permanent problem with one record: its message is the error."""


class TabPlan:
    """One tab's share of a round: add jobs, read conflicts, then build the request."""

    def __init__(
        self, layout: Layout, policy: Policy, model: str, known: Sequence[str] = ()
    ) -> None:
        self.layout = layout
        self.policy = policy
        self.model = model
        self.known = set(known)
        self._known_order = list(known)
        self._plans: dict[int, _JobPlan] = {}
        self.jobs: dict[int, Job] = {}
        self._restores: dict[int, tuple[str | None, dict[str, Cell]]] = {}
        self.conflicts: list[Conflict] = []

    # ------------------------------------------------------------------ adding records

    @property
    def indexes(self) -> list[int]:
        """The jobs with something in the request."""
        return list(self._plans)

    def add(self, job: Job) -> str | None:
        """Plan one record. Returns None when it has something to write, ``""`` when there
        is nothing to do, else the error that fails it (``Reject``)."""
        try:
            plan = self._plan(job)
        except Reject as reject:
            return str(reject)
        if plan is None:
            return ""
        self._plans[job.index] = plan
        self.jobs[job.index] = job
        return None

    def restore(self, row: int, record_id: str | None, values: Mapping[str, Any]) -> None:
        """Put ``values`` back into ``row``, which must still hold ``record_id`` (cells of a
        record that a misplaced write overwrote; None: blanks on a row without an id)."""
        cells = {}
        for name, value in values.items():
            try:
                cells[name] = encode(value, truncate=self.policy.truncate)
            except CellTooLong:
                continue
        if cells:
            self._restores[row] = (record_id, cells)

    def drop(self, index: int) -> None:
        """Take a job out of the request."""
        self._plans.pop(index, None)
        self.jobs.pop(index, None)

    def _plan(self, job: Job) -> _JobPlan | None:
        w, layout, id_name = job.write, self.layout, self.policy.id_column
        self._check_id_column()
        rows = layout.rows_of(w.record_id)
        hint = None if w.row_hint is None else w.row_hint - 1
        target = hint if hint in rows else (rows[0] if rows else None)
        row_plan = plan_row(
            w,
            found=target is not None,
            tombstoned=target in layout.tombstones,
            update_missing=UpdateMissing.CREATE if job.verify else self.policy.update_missing,
            delete_mode=self.policy.delete_mode,
        )
        if row_plan.action is RowAction.FAIL:
            raise Reject(row_plan.error)
        if row_plan.action is RowAction.NOTHING:
            return None
        plan = _JobPlan(job.index, w.record_id)
        if row_plan.action is RowAction.REMOVE:
            plan.removes = list(rows)
            return plan
        values = {
            n: v
            for n, v in row_plan.values.items()
            if n not in (id_name, DELETED_COLUMN) and n not in job.keep
        }
        cells = self._cells(job, values)
        tombstone = row_plan.action is RowAction.TOMBSTONE or row_plan.tombstone
        if tombstone or row_plan.revive:
            if self._column(job, DELETED_COLUMN, _TRUE):
                cells[DELETED_COLUMN] = _TRUE if tombstone else BLANK
            plan.new_names += self._new(DELETED_COLUMN)
        plan.new_names += [n for n in cells if n != DELETED_COLUMN and self._new(n)]
        if row_plan.action is RowAction.APPEND:
            plan.insert = {id_name: text(w.record_id), **cells}
            if self._new(id_name):
                plan.new_names.insert(0, id_name)
            return plan
        assert target is not None
        targets = rows if row_plan.action is RowAction.TOMBSTONE else [target]
        if job.verify and len(rows) > 1:  # one row per id: the others lose the id
            targets = [target]
            plan.detach = [r for r in rows if r != target]
        if not cells and not plan.detach:
            return None
        for row in targets:
            plan.rows[row] = dict(cells)
        partial = row_plan.action is RowAction.UPDATE and not (row_plan.revive or w.restarted)
        if job.checks and (partial or row_plan.action is RowAction.TOMBSTONE):
            plan.checks = [
                _Check(row, name, expected)
                for row in targets
                if row not in layout.tombstones
                for name in cells
                if name in w.base.fields
                and (expected := self._expected(w.base.fields[name])) is not None
            ]
        return plan

    def _check_id_column(self) -> None:
        """The tab must have exactly one id column (an empty tab gets one)."""
        name = self.policy.id_column
        found = self.layout.positions(name)
        if len(found) == 1 or (not found and self.layout.empty):
            return
        title = self.layout.info.title
        if not found:
            raise Reject(f"tab {title!r} has no {name!r} column in its header row")
        raise Reject(self._duplicate(name, found))

    def _duplicate(self, name: str, found: list[int]) -> str:
        letters = ", ".join(col_letters(c) for c in found)
        return (
            f"tab {self.layout.info.title!r} has {len(found)} columns named {name!r} "
            f"({letters}): rename or remove all but one"
        )

    def _cells(self, job: Job, values: Mapping[str, Any]) -> dict[str, Cell]:
        """The record's values as cells, keyed by column name (no column: no cell)."""
        out: dict[str, Cell] = {}
        for name, value in values.items():
            if not str(name).strip():
                raise Reject("a field whose name is blank cannot be a column")
            try:
                cell = encode(value, truncate=self.policy.truncate)
            except CellTooLong as exc:
                raise Reject(
                    f"{self.model} {job.write.record_id!r}: field {name!r} {exc}"
                ) from None
            if self._column(job, name, cell):
                out[name] = cell
        return out

    def _column(self, job: Job, name: str, cell: Cell) -> bool:
        """Whether ``name`` has (or gets) a column; ``Reject`` when it cannot."""
        found = self.layout.positions(name)
        if len(found) > 1:
            raise Reject(self._duplicate(name, found))
        if found:
            return True
        if cell is BLANK:
            return False  # a blank needs no column of its own
        title = self.layout.info.title
        had = job.write.base.fields.get(name) is not None  # its row had a cell there
        if (name in self.known or had) and not (job.verify or self.layout.created):
            raise Reject(
                f"tab {title!r} has no column {name!r} any more (renamed, deleted or blanked "
                f"in the sheet?): name a column {name!r} again, or run "
                "`syncqueue verify --repair` to add it back at the end"
            )
        if self.policy.unknown_fields == UnknownFields.FAIL and not self.layout.empty:
            raise Reject(
                f"{self.model} tab {title!r} has no column for field {name!r} "
                "(SYNCQUEUE_UNKNOWN_FIELDS=fail)"
            )
        return True

    def _new(self, name: str) -> list[str]:
        return [] if self.layout.positions(name) else [name]

    def _expected(self, value: Any) -> Any:
        try:
            return encode(value, truncate=self.policy.truncate).read
        except CellTooLong:
            return None

    # ------------------------------------------------------------------ conflicts

    def check_rows(self) -> list[int]:
        """Rows whose current cells must be read to detect a person's edits."""
        return sorted({c.row for p in self._plans.values() for c in p.checks})

    def apply_conflicts(self, current: Mapping[int, Sequence[Any]]) -> list[Conflict]:
        """Compare the owned cells about to be written with what was last written there;
        under ``keep`` the person's value stays. ``current``: row -> its cells as read."""
        found: list[Conflict] = []
        keep = self.policy.keep_conflicts
        for plan in self._plans.values():
            for check in plan.checks:
                cells = current.get(check.row, [])
                col = self.layout.positions(check.name)
                value = cells[col[0]] if col and col[0] < len(cells) else None
                if same(value, check.expected):
                    continue
                if keep:
                    plan.rows[check.row].pop(check.name, None)
                found.append(Conflict(plan.index, plan.record_id, check.name, keep))
            plan.checks = []
        self.conflicts += found
        return found

    def kept_fields(self, index: int) -> frozenset[str]:
        """The fields of a job whose sheet value was kept (so a repair keeps it too)."""
        return frozenset(c.field for c in self.conflicts if c.index == index and c.kept)

    # ------------------------------------------------------------------ the request

    def new_columns(self) -> list[str]:
        """New header names, in order: the id (of an empty tab) first, then the configured
        order for the model, then the order the fields came in; ``_deleted`` last. A tab
        made by this request (again: it was deleted) gets every column known for it."""
        seen: dict[str, int] = {}
        if self.layout.created and self._plans:
            for name in [self.policy.id_column, *self._known_order]:
                seen.setdefault(name, len(seen))
        for plan in self._plans.values():
            for name in plan.new_names:
                seen.setdefault(name, len(seen))
        configured = {n: i for i, n in enumerate(self.policy.column_order.get(self.model, ()))}

        def rank(name: str) -> tuple[int, int]:
            if name == self.policy.id_column:
                return (0, 0)
            if name == DELETED_COLUMN:
                return (3, 0)
            if name in configured:
                return (1, configured[name])
            return (2, seen[name])

        return sorted(seen, key=rank)

    def added_cells(self) -> tuple[int, int]:
        """(rows, columns) this request adds to the grid."""
        return sum(p.insert is not None for p in self._plans.values()), len(self.new_columns())

    def inserting(self) -> list[int]:
        """Jobs that add a row."""
        return [i for i, p in self._plans.items() if p.insert is not None]

    def column_users(self) -> list[int]:
        """Jobs that need a new column."""
        return [i for i, p in self._plans.items() if p.new_names]

    def _columns(self) -> dict[str, int]:
        header = self.layout.header
        cols = {name: c for c, name in enumerate(header) if name and header.count(name) == 1}
        cols.update((name, len(header) + i) for i, name in enumerate(self.new_columns()))
        return cols

    def _updates(self) -> dict[int, tuple[str | None, dict[str, Cell]]]:
        """Existing row -> (the id it must hold after the write, its cells)."""
        out: dict[int, tuple[str | None, dict[str, Cell]]] = {
            row: (rid, dict(cells)) for row, (rid, cells) in self._restores.items()
        }
        owned = self.known | {self.policy.id_column, DELETED_COLUMN}
        for plan in self._plans.values():
            for row, cells in plan.rows.items():
                out.setdefault(row, (plan.record_id, {}))[1].update(cells)
            for row in plan.detach:
                blanks = {n: BLANK for n in self.layout.header if n in owned}
                out[row] = (None, blanks)
        return out

    def written_names(self) -> list[str]:
        """Every column this request writes cells under (new ones last)."""
        names: dict[str, None] = {}
        for _, cells in self._updates().values():
            names.update(dict.fromkeys(cells))
        for _, cells in self._inserts():
            names.update(dict.fromkeys(cells))
        return [n for n in [*names, *self.new_columns()] if n != self.policy.id_column]

    def _inserts(self) -> list[tuple[str, dict[str, Cell]]]:
        return [(p.record_id, p.insert) for p in self._plans.values() if p.insert is not None]

    def _removes(self) -> list[int]:
        return sorted({r for p in self._plans.values() for r in p.removes}, reverse=True)

    @property
    def insert_at(self) -> int:
        """Where new rows go: after the last row holding an id or a tombstone."""
        return self.layout.last_row + 1

    def requests(self) -> list[dict[str, Any]]:
        """The subrequests, in an order where each position is still right when applied:
        new tab, new columns (after the header), updates, new rows (after the last record),
        deletions (highest first)."""
        if not self._plans and not self._restores:
            return []
        info, cols = self.layout.info, self._columns()
        sid = info.sheet_id
        out: list[dict[str, Any]] = []
        if self.layout.created:
            out.append({"addSheet": {"properties": {"sheetId": sid, "title": info.title}}})
        new = self.new_columns()
        if new:
            width = self.layout.width
            out.append(_insert(sid, "COLUMNS", width, len(new)))
            out.append(_cells(sid, 0, width, [[text(n) for n in new]]))
        for row, (_, cells) in sorted(self._updates().items()):
            by_col = {cols[n]: c for n, c in cells.items() if n in cols}
            for first, count in runs(by_col):
                out.append(_cells(sid, row, first, [[by_col[first + k] for k in range(count)]]))
        inserts = self._inserts()
        if inserts:
            rows = [{cols[n]: c for n, c in cells.items()} for _, cells in inserts]
            width = max(max(r) for r in rows) + 1
            values = [[r.get(c, BLANK) for c in range(width)] for r in rows]
            out.append(_insert(sid, "ROWS", self.insert_at, len(inserts)))
            out.append(_cells(sid, self.insert_at, 0, values))
        for first, count in reversed(runs(self._removes())):
            out.append(
                {
                    "deleteDimension": {
                        "range": {
                            "sheetId": sid,
                            "dimension": "ROWS",
                            "startIndex": first,
                            "endIndex": first + count,
                        }
                    }
                }
            )
        return out

    # ------------------------------------------------------------------ after the write

    def expected_header(self) -> list[str]:
        """The header right after the write."""
        return self.layout.header + self.new_columns()

    def id_column_after(self) -> int:
        """The id column right after the write."""
        return self.expected_header().index(self.policy.id_column)

    def deleted_column_after(self) -> int | None:
        """The ``_deleted`` column right after the write (None: there is none)."""
        header = self.expected_header()
        return header.index(DELETED_COLUMN) if DELETED_COLUMN in header else None

    def response_ranges(self, title: str) -> list[str]:
        """What the write's answer must hold to check it: header, ids, tombstones."""
        ranges = [header_a1(title), column_a1(title, self.id_column_after())]
        deleted = self.deleted_column_after()
        if deleted is not None:
            ranges.append(column_a1(title, deleted))
        return ranges

    def expected_ids(self) -> list[str | None]:
        """The id column right after the write (row 0 first)."""
        ids = list(self.layout.ids) + [None] * (self.insert_at - len(self.layout.ids))
        ids += [rid for rid, _ in self._inserts()]
        for row, (owner, _) in self._updates().items():
            if owner is None:
                ids[row] = None
        for row in self._removes():
            del ids[row]
        return trim(ids)

    def after(self, row: int, removes: Sequence[int] = ()) -> int:
        """Where an existing row is right after the write, ``removes`` (this request's row
        deletions, highest first) taken out above it."""
        return row - sum(1 for r in removes if r < row)

    def check(
        self, header: Sequence[str], ids: Sequence[str | None]
    ) -> tuple[bool, list[tuple[int, str | None, list[str]]], list[str]]:
        """Compare the tab right after the write (``header``, ``ids``) with what it must be.

        Every cell written must be under the meant header, in a row holding the meant id (the
        request does not write the id cells of existing rows, so they still say whose row was
        written). When rows were removed or lost their id, the ids left must be the ones meant.

        Returns (whether a write went astray; the cells that did, per row: (row after the
        write, the id it holds, the headers now above those cells); ids that vanished).
        """
        cols, removes = self._columns(), self._removes()
        hits = []
        for row, (owner, cells) in self._updates().items():
            if owner is None:
                continue
            at = self.after(row, removes)
            holder = ids[at] if at < len(ids) else None
            under = {
                n: header[cols[n]] if cols[n] < len(header) else "" for n in cells if n in cols
            }
            astray = [u for n, u in under.items() if holder != owner or u != n]
            if astray:
                hits.append((at, holder, astray))
        vanished: list[str] = []
        moved = any(
            c >= len(header) or header[c] != n for c, n in enumerate(self.expected_header())
        )
        if any(p.removes or p.detach for p in self._plans.values()):
            left = Counter(i for i in ids if i is not None)
            meant = Counter(i for i in self.expected_ids() if i is not None)
            vanished = sorted((meant - left).elements())
            moved = moved or left != meant
        return bool(hits or moved), hits, vanished

    def answer_readable(self, header: Sequence[str]) -> bool:
        """Whether the columns the answer was asked for (ids, tombstones) are still those."""
        wanted = [(self.id_column_after(), self.policy.id_column)]
        deleted = self.deleted_column_after()
        if deleted is not None:
            wanted.append((deleted, DELETED_COLUMN))
        return all(c < len(header) and header[c] == name for c, name in wanted)

    def size(self) -> int:
        """Bytes of the subrequests as JSON."""
        return len(json.dumps(self.requests(), separators=(",", ":")))


def _insert(sheet_id: int, dimension: str, start: int, count: int) -> dict[str, Any]:
    return {
        "insertDimension": {
            "range": {
                "sheetId": sheet_id,
                "dimension": dimension,
                "startIndex": start,
                "endIndex": start + count,
            },
            "inheritFromBefore": False,
        }
    }


def _cells(sheet_id: int, row: int, col: int, rows: list[list[Cell]]) -> dict[str, Any]:
    return {
        "updateCells": {
            "start": {"sheetId": sheet_id, "rowIndex": row, "columnIndex": col},
            "rows": [{"values": [c.data() for c in r]} for r in rows],
            "fields": "userEnteredValue",
        }
    }


def record_size(write: RecordWrite) -> int:
    """About the request bytes one record costs (before any read): its changed cells when
    its row was written before, else its whole state; plus a subrequest's framing."""
    new_row = write.base.touched is None or write.restarted
    values = write.state.fields if new_row and write.state.live else write.cells
    return 160 + sum(len(json.dumps(v, default=str)) + 40 for v in values.values())
