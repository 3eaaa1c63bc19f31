"""A1 notation, cell values and a tab's layout (header, id column) for the Sheets writer."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_CELL_CHARS = 50_000  # Google Sheets' limit for one cell's text
_ROW_SPAN = re.compile(r"!\$?[A-Za-z]*\$?(\d+)(?::\$?[A-Za-z]*\$?(\d+))?$")


def col_letters(n: int) -> str:
    """1 -> ``A``, 27 -> ``AA``."""
    out = ""
    while n > 0:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def quote_title(title: str) -> str:
    """A tab title quoted for A1 notation (always quoted: always valid)."""
    return "'" + title.replace("'", "''") + "'"


def row_range(title: str, row: int, first_col: int, last_col: int) -> str:
    """``'Tab'!C5:E5``."""
    return f"{quote_title(title)}!{col_letters(first_col)}{row}:{col_letters(last_col)}{row}"


def column_range(title: str, col: int) -> str:
    """``'Tab'!C:C``: a whole column."""
    letters = col_letters(col)
    return f"{quote_title(title)}!{letters}:{letters}"


def header_range(title: str) -> str:
    """``'Tab'!1:1``: the header row."""
    return f"{quote_title(title)}!1:1"


def parse_row_span(updated_range: str) -> tuple[int, int]:
    """First and last row of ``'Tab'!A5:D7`` -> (5, 7)."""
    match = _ROW_SPAN.search(updated_range)
    if not match:
        raise ValueError(f"cannot read rows from range {updated_range!r}")
    first = int(match.group(1))
    return first, int(match.group(2) or first)


def cell_value(value: Any) -> Any:
    """A payload value as a RAW cell: text, number or boolean; nested data as JSON text
    (as the workbook writer does)."""
    if value is None:
        return ""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def runs(cells: dict[int, Any]) -> list[tuple[int, list[Any]]]:
    """Group ``{col: value}`` into contiguous ``(first_col, values)`` runs."""
    out: list[tuple[int, list[Any]]] = []
    for col in sorted(cells):
        if out and out[-1][0] + len(out[-1][1]) == col:
            out[-1][1].append(cells[col])
        else:
            out.append((col, [cells[col]]))
    return out


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


@dataclass
class TabLayout:
    """What one batch knows of a tab: header, where each id is, which rows are tombstoned."""

    title: str
    sheet_id: int
    col_count: int
    header: list[str] = field(default_factory=list)
    new_columns: dict[int, str] = field(default_factory=dict)
    rows_by_id: dict[str, list[int]] = field(default_factory=dict)
    tombstoned: set[int] = field(default_factory=set)

    @property
    def fresh(self) -> bool:
        """No header at all yet (a new or empty tab): fields define it."""
        return not any(self.header[: len(self.header) - len(self.new_columns)])

    @property
    def width(self) -> int:
        """Columns in use by the header."""
        return len(self.header)

    def column(self, name: str) -> int | None:
        """1-based column of a header name (first match), or None."""
        try:
            return self.header.index(name) + 1
        except ValueError:
            return None

    def add_column(self, name: str) -> int:
        """Add a header cell after the last one; return its column."""
        self.header.append(name)
        col = len(self.header)
        self.new_columns[col] = name
        return col

    def read_ids(self, values: list[list[Any]]) -> None:
        """Index the id column (rows of a ``C:C`` read; row 1 is the header)."""
        self.rows_by_id = {}
        for row, cells in enumerate(values[1:], start=2):
            record_id = _text(cells[0]) if cells else ""
            if record_id:
                self.rows_by_id.setdefault(record_id, []).append(row)

    def read_tombstones(self, values: list[list[Any]]) -> None:
        """Note rows whose ``_deleted`` cell is TRUE."""
        self.tombstoned = {
            row
            for row, cells in enumerate(values[1:], start=2)
            if cells and _text(cells[0]).upper() == "TRUE"
        }

    def header_ranges(self) -> list[dict[str, Any]]:
        """ValueRanges writing this batch's new header cells."""
        return [
            {
                "range": row_range(self.title, 1, col, col + len(values) - 1),
                "majorDimension": "ROWS",
                "values": [values],
            }
            for col, values in runs(dict(self.new_columns))
        ]


def parse_header(values: list[list[Any]]) -> list[str]:
    """The header row's names ('' for blank cells) from a ``1:1`` read."""
    return [_text(v) for v in values[0]] if values else []
