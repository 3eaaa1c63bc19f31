"""What the Sheets writer knows of a tab at one moment: its header, and per row the record id
and whether the row is a tombstone. Built from a read (``values:batchGetByDataFilter``) or from
a write's answer (the same columns right after the write); A1 and grid-range helpers.

Rows and columns are 0-based here (row 0 is the header row), as in Google's grid ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncqueue_tasks.writers.sheets.cells import header_name, id_key, is_tombstone


@dataclass(frozen=True, slots=True)
class TabInfo:
    """A tab's properties (``spreadsheets.get``)."""

    sheet_id: int
    title: str
    row_count: int
    col_count: int


@dataclass
class Layout:
    """A tab's header and, per row, the id it holds and whether it is tombstoned."""

    info: TabInfo
    header: list[str]
    ids: list[str | None] = field(default_factory=list)  # row -> id (row 0: None)
    tombstones: set[int] = field(default_factory=set)
    created: bool = False  # the tab does not exist yet: this request adds it
    _rows: dict[str, list[int]] | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        """Columns in use by the header (up to its last non-blank cell)."""
        return len(self.header)

    @property
    def empty(self) -> bool:
        """No header at all: the first write defines it."""
        return not self.header

    def positions(self, name: str) -> list[int]:
        """Every column whose header is ``name``."""
        return [c for c, h in enumerate(self.header) if h == name]

    def rows_of(self, record_id: str) -> list[int]:
        """Every row whose id cell holds ``record_id``, top first."""
        if self._rows is None:
            self._rows = {}
            for row, rid in enumerate(self.ids):
                if rid is not None:
                    self._rows.setdefault(rid, []).append(row)
        return self._rows.get(record_id, [])

    @property
    def last_row(self) -> int:
        """The last row holding an id or a tombstone (0: none)."""
        last = max(self.tombstones, default=0)
        for row in range(len(self.ids) - 1, last, -1):
            if self.ids[row] is not None:
                return row
        return last


def trim(values: Sequence[Any]) -> list[Any]:
    """``values`` without trailing blanks."""
    out = list(values)
    while out and (out[-1] is None or out[-1] == ""):
        out.pop()
    return out


def build(
    info: TabInfo,
    header: Sequence[Any],
    id_values: Sequence[Any],
    deleted_values: Sequence[Any],
) -> Layout:
    """A layout from the raw header row and the id and ``_deleted`` columns (rows 1..)."""
    ids: list[str | None] = [None, *(id_key(v) for v in id_values)]
    tombstones = {row for row, v in enumerate(deleted_values, start=1) if is_tombstone(v)}
    return Layout(info, trim([header_name(v) for v in header]), trim(ids), tombstones)


def first_cells(value_range: dict[str, Any]) -> list[Any]:
    """The first cell of each row of a ValueRange (None for an empty row)."""
    return [row[0] if row else None for row in value_range.get("values", [])]


def row_cells(value_range: dict[str, Any]) -> list[Any]:
    """The cells of a one-row ValueRange."""
    rows = value_range.get("values", [])
    return list(rows[0]) if rows else []


def grid_column(data: dict[str, Any]) -> list[Any]:
    """The first cell of each row of a ``GridData`` (effective values)."""
    return [_effective((r.get("values") or [{}])[0]) for r in data.get("rowData", [])]


def grid_row(data: dict[str, Any]) -> list[Any]:
    """The cells of a one-row ``GridData`` (effective values)."""
    rows = data.get("rowData", [])
    return [_effective(c) for c in (rows[0].get("values", []) if rows else [])]


def _effective(cell: dict[str, Any]) -> Any:
    value = cell.get("effectiveValue") or {}
    for kind in ("stringValue", "numberValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


# ----------------------------------------------------------------------------- addressing


def col_letters(n: int) -> str:
    """0 -> ``A``, 26 -> ``AA``."""
    out = ""
    n += 1
    while n > 0:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def quote_title(title: str) -> str:
    """A tab title quoted for A1 notation (always quoted: always valid)."""
    return "'" + title.replace("'", "''") + "'"


def header_a1(title: str) -> str:
    """``'Tab'!1:1``."""
    return f"{quote_title(title)}!1:1"


def column_a1(title: str, col: int) -> str:
    """``'Tab'!C2:C``: a column below the header."""
    letters = col_letters(col)
    return f"{quote_title(title)}!{letters}2:{letters}"


def grid(sheet_id: int, **bounds: int) -> dict[str, Any]:
    """A ``gridRange`` data filter."""
    return {"gridRange": {"sheetId": sheet_id, **bounds}}


def header_filter(sheet_id: int) -> dict[str, Any]:
    """The header row of a tab, by sheetId."""
    return grid(sheet_id, startRowIndex=0, endRowIndex=1)


def column_filter(sheet_id: int, col: int) -> dict[str, Any]:
    """One column below the header, by sheetId."""
    return grid(sheet_id, startRowIndex=1, startColumnIndex=col, endColumnIndex=col + 1)


def runs(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indexes as ``(first, count)`` runs of consecutive ones."""
    out: list[list[int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return [(first, count) for first, count in out]
