"""Compare what a destination shows for a model with the records' synced states (pure).

A destination (a Google Sheets tab, a workbook sheet) is read once as a :class:`Grid`: its
header and its rows of typed cell values. :func:`compare` reports, per record and per row:

- ``missing``: a record whose row should be there is not (or a tombstone row is missing);
- ``orphan``: a row whose id no record has (reported, never touched);
- ``duplicate``: an id held by more than one row;
- ``differs``: an owned cell that is not what was last written there (a person edited it);
- ``should_be_live``: a tombstoned row of a live record; ``should_be_deleted``: the reverse
  (or, in ``remove`` mode, a row that should be gone);
- ``column``: an owned column that is missing or duplicated in the header.

Records a claim holds right now (being written) are skipped. Findings carry record ids, field
names and row numbers, never values (reports are stored and logged).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from syncqueue_tasks.core.records import (
    RecordKey,
    RecordState,
    RecordWrite,
    SyncedRecord,
    record_write,
)
from syncqueue_tasks.writers.rules import DELETED_COLUMN, DeleteMode


class Kind(enum.StrEnum):
    """What a finding is about."""

    MISSING = "missing"
    ORPHAN = "orphan"
    DUPLICATE = "duplicate"
    DIFFERS = "differs"
    SHOULD_BE_LIVE = "should_be_live"
    SHOULD_BE_DELETED = "should_be_deleted"
    COLUMN = "column"


# Kinds a repair rewrites (``differs`` only when conflicts are overwritten; orphans never).
REPAIRABLE = frozenset(
    {Kind.MISSING, Kind.DUPLICATE, Kind.DIFFERS, Kind.SHOULD_BE_LIVE, Kind.SHOULD_BE_DELETED}
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference. ``rows``: 1-based sheet rows; ``name``: a field or column name."""

    kind: Kind
    record_id: str = ""
    name: str = ""
    rows: tuple[int, ...] = ()

    def describe(self) -> str:
        """One line for people."""
        where = f" (row {', '.join(map(str, self.rows))})" if self.rows else ""
        what = {
            Kind.MISSING: "has no row",
            Kind.ORPHAN: "is in the sheet but no record has this id",
            Kind.DUPLICATE: "is in more than one row",
            Kind.DIFFERS: f"field {self.name!r} differs from what was last written",
            Kind.SHOULD_BE_LIVE: "is live but its row is a tombstone",
            Kind.SHOULD_BE_DELETED: "is deleted but its row is not",
            Kind.COLUMN: f"column {self.name!r} is missing or duplicated",
        }[self.kind]
        subject = f"record {self.record_id!r} " if self.record_id else ""
        return f"{subject}{what}{where}"


@dataclass
class ModelReport:
    """What verifying one model found (and, with repair, fixed)."""

    model: str
    destination: str
    rows: int = 0
    records: int = 0
    in_flight: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: int = 0
    unrepaired: int = 0
    reads: int = 0
    writes: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Findings per kind."""
        out = {k.value: 0 for k in Kind}
        for f in self.findings:
            out[f.kind.value] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (findings included)."""
        data = asdict(self)
        data["findings"] = [{**asdict(f), "kind": f.kind.value} for f in self.findings]
        data["counts"] = self.counts()
        return data


@dataclass(frozen=True)
class Grid:
    """A destination as read: header names and data rows (row 2 first) of typed values."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Cells:
    """How a destination stores values: the value a read returns for a payload value (None:
    it cannot hold it), equality of read values, the id a cell holds, tombstones."""

    expected: Callable[[Any], Any]
    same: Callable[[Any, Any], bool]
    id_key: Callable[[Any], str | None]
    is_tombstone: Callable[[Any], bool]


def compare(
    grid: Grid,
    records: Mapping[str, SyncedRecord],
    cells: Cells,
    *,
    id_column: str,
    delete_mode: str,
) -> tuple[list[Finding], int]:
    """The findings, and how many records were skipped because a claim holds them."""
    header = list(grid.header)
    columns: dict[str, list[int]] = {}
    for c, name in enumerate(header):
        if name:
            columns.setdefault(name, []).append(c)
    id_cols = columns.get(id_column, [])
    if len(id_cols) != 1:
        return [Finding(Kind.COLUMN, name=id_column)], 0
    rows_of: dict[str, list[int]] = {}
    for n, values in enumerate(grid.rows):
        key = cells.id_key(_at(values, id_cols[0]))
        if key is not None:
            rows_of.setdefault(key, []).append(n)
    deleted = columns.get(DELETED_COLUMN, [])
    findings: list[Finding] = []
    missing_columns: set[str] = set()
    for key, rows in sorted(rows_of.items()):
        if key not in records:
            findings.append(Finding(Kind.ORPHAN, key, rows=_sheet_rows(rows)))
        elif len(rows) > 1:
            findings.append(Finding(Kind.DUPLICATE, key, rows=_sheet_rows(rows)))
    in_flight = 0
    for key, synced in sorted(records.items()):
        if synced.claimed:
            in_flight += 1
            continue
        state, rows = synced.state, rows_of.get(key, [])
        tomb = [r for r in rows if deleted and cells.is_tombstone(_at(grid.rows[r], deleted[0]))]
        if not state.live:
            live_rows = [r for r in rows if r not in tomb]
            if (delete_mode == DeleteMode.REMOVE and rows) or live_rows:
                findings.append(Finding(Kind.SHOULD_BE_DELETED, key, rows=_sheet_rows(rows)))
            elif delete_mode != DeleteMode.REMOVE and not rows and state.touched is not None:
                findings.append(Finding(Kind.MISSING, key))
            continue
        if not rows:
            findings.append(Finding(Kind.MISSING, key))
            continue
        row = rows[0]
        if row in tomb:
            findings.append(Finding(Kind.SHOULD_BE_LIVE, key, rows=_sheet_rows([row])))
            continue
        for name, value in state.fields.items():
            found = columns.get(name, [])
            if len(found) != 1:
                if value is not None or len(found) > 1:
                    missing_columns.add(name)
                continue
            expected = cells.expected(value)
            if expected is not None and not cells.same(_at(grid.rows[row], found[0]), expected):
                findings.append(Finding(Kind.DIFFERS, key, name, _sheet_rows([row])))
    findings += [Finding(Kind.COLUMN, name=n) for n in sorted(missing_columns)]
    return findings, in_flight


def blank(value: Any) -> bool:
    """Whether a read value is an empty cell."""
    return value is None or value == ""


def same(read: Any, expected: Any) -> bool:
    """Whether a read value is the expected one (typed: ``"12"`` is not ``12``, ``true`` is
    not ``"TRUE"``; numbers compare as doubles)."""
    if blank(read) or blank(expected):
        return blank(read) and blank(expected)
    if isinstance(read, bool) or isinstance(expected, bool):
        return isinstance(read, bool) and isinstance(expected, bool) and read == expected
    if isinstance(read, int | float) and isinstance(expected, int | float):
        return float(read) == float(expected)
    return type(read) is type(expected) and read == expected


def _at(row: Sequence[Any], col: int) -> Any:
    return row[col] if col < len(row) else None


def _sheet_rows(rows: Sequence[int]) -> tuple[int, ...]:
    """Data row indexes as 1-based sheet rows (the header is row 1)."""
    return tuple(r + 2 for r in rows)


def restore_write(key: RecordKey, state: RecordState, blanks: Sequence[str] = ()) -> RecordWrite:
    """A write that brings a record's row to ``state`` whole (a repair); a deleted record's
    row gets the ``blanks`` columns emptied. Its base is ``state``: nothing to compare."""
    cells = dict(state.fields) if state.live else dict.fromkeys(blanks)
    return replace(record_write(key, state, ()), cells=cells)
