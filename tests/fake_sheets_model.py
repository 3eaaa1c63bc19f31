"""The fake Sheets API's data model: errors, A1 notation, tabs, cell values, developer metadata.

Cells hold Python values as Google stores them: ``str``, ``bool``, numbers as doubles (an
integral double is kept as ``int``, so ``2**53 + 1`` arrives as ``2**53``) and
:class:`Formula` (never evaluated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_CELL_CHARS = 50_000
MAX_CELLS = 10_000_000
_CELL = re.compile(r"^([A-Za-z]*)(\d*)$")
_PLAIN_TITLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# How FORMATTED_VALUE shows booleans, by the spreadsheet's locale (default: English).
BOOLEAN_WORDS = {
    "de_DE": ("WAHR", "FALSCH"),
    "fr_FR": ("VRAI", "FAUX"),
    "es_ES": ("VERDADERO", "FALSO"),
}


class Formula(str):
    """A value entered as a formula (``=...``); the fake never evaluates it."""


class ApiError(Exception):
    """An error answer: HTTP status plus Google's ``error.message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Tab:
    """One sheet (tab): ``rows`` holds the cells in use, the grid is row_count x col_count."""

    sheet_id: int
    title: str
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = 1000
    col_count: int = 26

    def copy(self) -> Tab:
        return Tab(
            self.sheet_id, self.title, [r[:] for r in self.rows], self.row_count, self.col_count
        )

    def cell(self, r: int, c: int) -> Any:
        """The value at 0-based (r, c), or None."""
        if r < len(self.rows) and c < len(self.rows[r]):
            return self.rows[r][c]
        return None

    def set(self, r: int, c: int, value: Any) -> None:
        """Store ``value`` at 0-based (r, c) (None clears)."""
        while len(self.rows) <= r:
            self.rows.append([])
        row = self.rows[r]
        while len(row) <= c:
            row.append("")
        row[c] = "" if value is None else value


@dataclass
class Meta:
    """One developer metadata entry. ``dimension`` None: on the sheet (or, with sheet_id None,
    on the spreadsheet); else rows/columns [start, end) of the sheet."""

    metadata_id: int
    key: str
    value: str | None
    visibility: str
    sheet_id: int | None = None
    dimension: str | None = None
    start: int = 0
    end: int = 0

    def chars(self) -> int:
        return len(self.key) + len(self.value or "")

    def location_type(self) -> str:
        if self.dimension is not None:
            return "ROW" if self.dimension == "ROWS" else "COLUMN"
        return "SPREADSHEET" if self.sheet_id is None else "SHEET"

    def location(self) -> dict[str, Any]:
        out: dict[str, Any] = {"locationType": self.location_type()}
        if self.dimension is not None:
            out["dimensionRange"] = {
                "sheetId": self.sheet_id,
                "dimension": self.dimension,
                "startIndex": self.start,
                "endIndex": self.end,
            }
        elif self.sheet_id is not None:
            out["sheetId"] = self.sheet_id
        else:
            out["spreadsheet"] = True
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metadataId": self.metadata_id,
            "metadataKey": self.key,
            "location": self.location(),
            "visibility": self.visibility,
        }
        if self.value is not None:
            out["metadataValue"] = self.value
        return out


@dataclass
class Book:
    """One spreadsheet: tabs by current title (in order), developer metadata by id, locale."""

    tabs: dict[str, Tab] = field(default_factory=dict)
    metadata: dict[int, Meta] = field(default_factory=dict)
    locale: str = "en_US"

    def copy(self) -> Book:
        return Book(
            {t: tab.copy() for t, tab in self.tabs.items()},
            {i: Meta(**vars(m)) for i, m in self.metadata.items()},
            self.locale,
        )

    def by_id(self, sheet_id: Any, where: str) -> Tab:
        for tab in self.tabs.values():
            if tab.sheet_id == sheet_id:
                return tab
        raise ApiError(400, f"{where}: No grid with id: {sheet_id}")

    def cells(self) -> int:
        return sum(t.row_count * t.col_count for t in self.tabs.values())

    def check_cells(self, limit: int, extra: int = 0) -> None:
        """Refuse (400) a grid that would hold more than ``limit`` cells."""
        if self.cells() + extra > limit:
            raise ApiError(
                400,
                "This action would increase the number of cells in the workbook above the limit "
                f"of {limit} cells.",
            )


@dataclass
class Range:
    title: str
    r1: int | None
    c1: int | None
    r2: int | None
    c2: int | None


# ----------------------------------------------------------------------------- A1 notation


def col_letters(n: int) -> str:
    """1 -> A, 27 -> AA."""
    out = ""
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def col_number(letters: str) -> int:
    """A -> 1, AA -> 27."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n


def quote_title(title: str) -> str:
    """Quote a sheet title for A1 notation when it needs it."""
    if _PLAIN_TITLE.match(title) and not _is_ref(title):
        return title
    return "'" + title.replace("'", "''") + "'"


def _is_ref(text: str) -> bool:
    parts = text.split(":")
    return 0 < len(parts) <= 2 and all(p and _CELL.match(p) for p in parts)


def _split(a1: str) -> tuple[str | None, str | None]:
    if a1.startswith("'"):
        title, i = "", 1
        while i < len(a1):
            if a1[i] == "'":
                if a1[i + 1 : i + 2] == "'":
                    title, i = title + "'", i + 2
                    continue
                break
            title, i = title + a1[i], i + 1
        rest = a1[i + 1 :]
        if not rest:
            return title, None
        if not rest.startswith("!"):
            raise ApiError(400, f"Unable to parse range: {a1}")
        return title, rest[1:]
    if "!" in a1:
        title, _, ref = a1.rpartition("!")
        return title, ref
    return (None, a1) if _is_ref(a1) else (a1, None)


def parse_range(a1: str, default_title: str) -> Range:
    """Parse ``'Tab'!A1:B2``, ``Tab!A:A``, ``Tab!1:1``, ``Tab`` or ``A1:B2`` (first tab)."""
    title, ref = _split(a1)
    title = title if title is not None else default_title
    if ref is None:
        return Range(title, None, None, None, None)
    if not _is_ref(ref):
        raise ApiError(400, f"Unable to parse range: {a1}")
    parts = [_CELL.match(p) for p in ref.split(":")]
    ends = [
        (
            int(m.group(2)) if m and m.group(2) else None,
            col_number(m.group(1)) if m and m.group(1) else None,
        )
        for m in parts
    ]
    (r1, c1), (r2, c2) = ends[0], ends[-1]
    if len(ends) == 1:
        r2, c2 = r1, c1
    return Range(title, r1, c1, r2, c2)


def format_range(title: str, r1: int, c1: int, r2: int, c2: int) -> str:
    """``'Tab'!A1:B2`` style text (1-based, inclusive)."""
    return f"{quote_title(title)}!{col_letters(c1)}{r1}:{col_letters(c2)}{r2}"


# ----------------------------------------------------------------------------- values


def empty(value: Any) -> bool:
    return value is None or value == ""


def double(value: Any) -> Any:
    """A JSON number as Sheets keeps it: a double (integral doubles shown as ``int``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


def formatted(value: Any, locale: str = "en_US") -> Any:
    """FORMATTED_VALUE rendering of a stored value."""
    if isinstance(value, bool):
        words = BOOLEAN_WORDS.get(locale, ("TRUE", "FALSE"))
        return words[0] if value else words[1]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def entered(value: Any, option: str) -> Any:
    """A ValueRange cell as stored under ``valueInputOption`` (RAW keeps strings as text)."""
    if option == "RAW" or not isinstance(value, str):
        return double(value)
    if value.startswith("="):
        return Formula(value)
    if value.upper() in ("TRUE", "FALSE"):
        return value.upper() == "TRUE"
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def check_cell(value: Any, where: str, poison: dict[str, str]) -> None:
    """Refuse a poisoned value, a too-long text, or a non-scalar value (400)."""
    if isinstance(value, str):
        if value in poison:
            raise ApiError(400, f"{where}: {poison[value]}")
        if len(value) > MAX_CELL_CHARS:
            raise ApiError(
                400,
                f"{where}: Your input contains more than the maximum of {MAX_CELL_CHARS} "
                "characters in a single cell.",
            )
    elif value is not None and not isinstance(value, int | float | bool):
        raise ApiError(400, f"{where}: Invalid value at 'data.values' ({type(value).__name__})")


def props(tab: Tab, index: int) -> dict[str, Any]:
    """SheetProperties as Google shapes them."""
    return {
        "sheetId": tab.sheet_id,
        "title": tab.title,
        "index": index,
        "sheetType": "GRID",
        "gridProperties": {"rowCount": tab.row_count, "columnCount": tab.col_count},
    }


@dataclass
class Options:
    """Points the documentation leaves open (see /work/notes/sheets-research.md), and limits."""

    metadata_follows_sort: bool = True  # row metadata moves with its row when a range is sorted
    metadata_follows_move: bool = True  # ... and with moveDimension
    unmatched_filter: str = "skip"  # a lookup matching nothing: "skip" it, or "error" (400)
    metadata_chars_per_sheet: int | None = None  # key + value characters on one sheet's locations
    metadata_chars_per_spreadsheet: int | None = None
    metadata_max_entries: int | None = None
    max_subrequests: int | None = None  # per spreadsheets.batchUpdate
    max_body_bytes: int | None = None  # larger request bodies get a 413
    max_cells: int = MAX_CELLS
    # A batchUpdate response range that does not resolve (a tab renamed since): "refuse" (400,
    # nothing applied) or "after" (400, the update stays applied).
    response_range_error: str = "refuse"
