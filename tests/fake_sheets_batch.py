"""``spreadsheets.batchUpdate`` for the fake Sheets API: subrequests applied in order, atomically.

Supported: addSheet, deleteSheet, updateSheetProperties (title, grid size), appendDimension,
insertDimension, deleteDimension, moveDimension, sortRange, appendCells, updateCells,
repeatCell, create/update/deleteDeveloperMetadata. Anything else is a 400. The caller
(:class:`fake_sheets.Store`) snapshots the spreadsheet and restores it if any subrequest fails.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import fake_sheets_metadata as md
from fake_sheets_model import (
    ApiError,
    Book,
    Formula,
    Options,
    Tab,
    check_cell,
    double,
    empty,
    props,
)

Reply = dict[str, Any]
_KINDS = ("numberValue", "stringValue", "boolValue", "formulaValue")


class Env(Protocol):
    """What subrequests need from the store."""

    options: Options
    rng: random.Random
    poison: dict[str, str]

    def new_sheet_id(self) -> int: ...


def apply(env: Env, book: Book, requests: list[Any]) -> list[Reply]:
    """Apply the subrequests in order; raise ApiError on the first invalid one."""
    options = env.options
    if options.max_subrequests is not None and len(requests) > options.max_subrequests:
        raise ApiError(400, f"Too many requests in one batch (max {options.max_subrequests})")
    replies = []
    for i, req in enumerate(requests):
        if not isinstance(req, Mapping) or len(req) != 1:
            raise ApiError(400, f"Invalid requests[{i}]: exactly one request kind expected")
        (kind, spec), where = next(iter(req.items())), f"Invalid requests[{i}].{next(iter(req))}"
        handler = _HANDLERS.get(kind)
        if handler is None or not isinstance(spec, Mapping):
            raise ApiError(400, f"Invalid requests[{i}]: unsupported request {kind}")
        replies.append(handler(env, book, spec, where))
    book.check_cells(options.max_cells)
    md.check_limits(book, options, "Invalid requests")
    return replies


# ----------------------------------------------------------------------------- sheets


def _add_sheet(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    properties = dict(spec.get("properties") or {})
    sheet_id = properties.get("sheetId")
    if sheet_id is None:
        sheet_id = env.new_sheet_id()
    elif any(t.sheet_id == sheet_id for t in book.tabs.values()):
        raise ApiError(400, f"{where}: A sheet with the id {sheet_id} already exists.")
    title = str(properties.get("title") or f"Sheet{sheet_id}")
    _check_title(book, title, where)
    grid = properties.get("gridProperties") or {}
    tab = Tab(
        int(sheet_id), title, [], int(grid.get("rowCount", 1000)), int(grid.get("columnCount", 26))
    )
    book.tabs[title] = tab
    return {"addSheet": {"properties": props(tab, len(book.tabs) - 1)}}


def _check_title(book: Book, title: str, where: str) -> None:
    if title in book.tabs:
        raise ApiError(
            400,
            f'{where}: A sheet with the name "{title}" already exists. Please enter another name.',
        )


def _delete_sheet(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab = book.by_id(spec.get("sheetId"), where)
    if len(book.tabs) == 1:
        raise ApiError(400, f"{where}: You can't remove all the sheets in a document.")
    del book.tabs[tab.title]
    md.drop_sheet(book, tab.sheet_id)
    return {}


def _update_sheet(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    new = spec.get("properties") or {}
    tab = book.by_id(new.get("sheetId", 0), where)
    fields = {f.strip() for f in str(spec.get("fields") or "").split(",") if f.strip()}
    if not fields:
        raise ApiError(400, f"{where}: At least one field must be specified in 'fields'")
    if "title" in fields and new.get("title") != tab.title:
        title = str(new.get("title") or "")
        if not title:
            raise ApiError(400, f"{where}: The sheet title must not be empty")
        _check_title(book, title, where)
        # Re-key in place: keep the tabs' order.
        book.tabs = {(title if t is tab else k): t for k, t in book.tabs.items()}
        tab.title = title
    grid = new.get("gridProperties") or {}
    if "gridProperties.rowCount" in fields and int(grid.get("rowCount", 0)) < tab.row_count:
        _delete(book, tab, "ROWS", int(grid["rowCount"]), tab.row_count)
    elif "gridProperties.rowCount" in fields:
        tab.row_count = int(grid.get("rowCount", 0))
    if "gridProperties.columnCount" in fields and int(grid.get("columnCount", 0)) < tab.col_count:
        _delete(book, tab, "COLUMNS", int(grid["columnCount"]), tab.col_count)
    elif "gridProperties.columnCount" in fields:
        tab.col_count = int(grid.get("columnCount", 0))
    return {}


# ----------------------------------------------------------------------------- dimensions


def _dimension(book: Book, rng: Mapping[str, Any], where: str) -> tuple[Tab, bool, int, int]:
    tab = book.by_id(rng.get("sheetId"), where)
    if rng.get("dimension") not in ("ROWS", "COLUMNS"):
        raise ApiError(400, f"{where}: dimension must be ROWS or COLUMNS")
    return (
        tab,
        rng.get("dimension") == "ROWS",
        int(rng.get("startIndex", 0)),
        int(rng.get("endIndex", 0)),
    )


def _append_dimension(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab = book.by_id(spec.get("sheetId"), where)
    length = int(spec.get("length", 0))
    if length <= 0:
        raise ApiError(400, f"{where}: length must be positive")
    if spec.get("dimension") == "COLUMNS":
        tab.col_count += length
    else:
        tab.row_count += length
    return {}


def _insert_dimension(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab, rows, start, end = _dimension(book, spec.get("range") or {}, where)
    limit = tab.row_count if rows else tab.col_count
    if not 0 <= start < end or start > limit:
        raise ApiError(400, f"{where}: Invalid dimension range [{start}, {end}) (limit {limit})")
    n = end - start
    if rows:
        if len(tab.rows) > start:
            tab.rows[start:start] = [[] for _ in range(n)]
        tab.row_count += n
    else:
        for row in tab.rows:
            if len(row) > start:
                row[start:start] = [""] * n
        tab.col_count += n
    dimension = "ROWS" if rows else "COLUMNS"
    md.remap(book, tab.sheet_id, dimension, lambda i: i if i < start else i + n)
    return {}


def _delete(book: Book, tab: Tab, dimension: str, start: int, end: int) -> None:
    n = end - start
    if dimension == "ROWS":
        del tab.rows[start:end]
        tab.row_count -= n
    else:
        for row in tab.rows:
            del row[start:end]
        tab.col_count -= n
    md.remap(
        book, tab.sheet_id, dimension, lambda i: i if i < start else (None if i < end else i - n)
    )


def _delete_dimension(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab, rows, start, end = _dimension(book, spec.get("range") or {}, where)
    limit = tab.row_count if rows else tab.col_count
    if not 0 <= start < end <= limit:
        raise ApiError(400, f"{where}: Invalid dimension range [{start}, {end}) (limit {limit})")
    if end - start == limit:
        raise ApiError(400, f"{where}: You can't delete all the rows/columns on the sheet.")
    _delete(book, tab, "ROWS" if rows else "COLUMNS", start, end)
    return {}


def _permute(tab: Tab, rows: bool, order: list[int]) -> None:
    """Put old index ``order[k]`` at new index k (rows, or columns of every row)."""
    if rows:
        cells = tab.rows + [[] for _ in range(len(order) - len(tab.rows))]
        tab.rows = [cells[i] for i in order]
        while tab.rows and not tab.rows[-1]:
            tab.rows.pop()
        return
    for n, row in enumerate(tab.rows):
        padded = row + [""] * (len(order) - len(row))
        tab.rows[n] = [padded[i] for i in order]


def _move_dimension(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab, rows, start, end = _dimension(book, spec.get("source") or {}, where)
    limit = tab.row_count if rows else tab.col_count
    dest = int(spec.get("destinationIndex", -1))
    if not 0 <= start < end <= limit or not 0 <= dest <= limit or start < dest < end:
        raise ApiError(400, f"{where}: Invalid move of [{start}, {end}) to {dest} (limit {limit})")
    rest = [i for i in range(limit) if not start <= i < end]
    at = dest if dest <= start else dest - (end - start)
    order = rest[:at] + list(range(start, end)) + rest[at:]
    _permute(tab, rows, order)
    if env.options.metadata_follows_move:
        new = {old: new for new, old in enumerate(order)}
        md.remap(book, tab.sheet_id, "ROWS" if rows else "COLUMNS", new.get)
    return {}


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return 2, int(value)
    if isinstance(value, int | float):
        return 0, value
    return 1, str(value).casefold()


def _sort_range(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab, r0, c0, r1, c1 = md.grid_box(book, spec.get("range") or {}, where)
    specs = [
        (int(s.get("dimensionIndex", 0)), s.get("sortOrder", "ASCENDING") == "DESCENDING")
        for s in spec.get("sortSpecs") or []
    ]
    if not specs or any(not c0 <= col < c1 for col, _ in specs):
        raise ApiError(400, f"{where}: sortSpecs must name columns inside the range")

    def compare(a: int, b: int) -> int:
        for col, descending in specs:
            va, vb = tab.cell(a, col), tab.cell(b, col)
            if empty(va) or empty(vb):  # blanks sort last either way
                if empty(va) != empty(vb):
                    return 1 if empty(va) else -1
                continue
            ka, kb = _sort_key(va), _sort_key(vb)
            if ka != kb:
                return (1 if ka > kb else -1) * (-1 if descending else 1)
        return 0

    order = sorted(range(r0, min(r1, max(len(tab.rows), r0))), key=functools.cmp_to_key(compare))
    block = [[tab.cell(r, c) for c in range(c0, c1)] for r in order]
    for k, values in enumerate(block):
        for j, value in enumerate(values):
            if value is not None or tab.cell(r0 + k, c0 + j) is not None:
                tab.set(r0 + k, c0 + j, value)
    if env.options.metadata_follows_sort:
        new = {old: r0 + k for k, old in enumerate(order)}
        md.remap(book, tab.sheet_id, "ROWS", lambda i: new.get(i, i))
    return {}


# ----------------------------------------------------------------------------- cells


def _fields(spec: Mapping[str, Any], where: str) -> bool:
    """Whether the fields mask includes the cells' values (a mask is required)."""
    fields = {f.strip() for f in str(spec.get("fields") or "").split(",") if f.strip()}
    if not fields:
        raise ApiError(400, f"{where}: At least one field must be specified in 'fields'")
    return "*" in fields or any(f.split(".")[0] == "userEnteredValue" for f in fields)


def _value(cell: Any, where: str, poison: dict[str, str]) -> Any:
    """A CellData's userEnteredValue as stored (None: empty)."""
    if not isinstance(cell, Mapping):
        raise ApiError(400, f"{where}: Invalid CellData")
    extended = cell.get("userEnteredValue")
    if extended is None:
        return None
    kinds = [k for k in extended if k in _KINDS or k == "errorValue"]
    if len(kinds) != 1 or kinds[0] == "errorValue":
        raise ApiError(
            400, f"{where}: userEnteredValue must set exactly one of {', '.join(_KINDS)}"
        )
    kind, value = kinds[0], extended[kinds[0]]
    expected: type | tuple[type, ...] = {
        "numberValue": (int, float),
        "boolValue": bool,
    }.get(kind, str)
    if not isinstance(value, expected) or (kind == "numberValue" and isinstance(value, bool)):
        raise ApiError(400, f"{where}: Invalid value at '{kind}'")
    check_cell(value, where, poison)
    if kind == "formulaValue":
        return Formula(value)
    return double(value)


def _write_rows(
    tab: Tab, r0: int, c0: int, rows: Any, where: str, env: Env, bound: tuple[int, int] | None
) -> list[tuple[int, int, Any]]:
    """Validate RowData at (r0, c0): the cell writes, inside the grid (and ``bound``)."""
    if not isinstance(rows, list):
        raise ApiError(400, f"{where}: rows must be a list of RowData")
    r_end, c_end = bound or (tab.row_count, tab.col_count)
    writes = []
    for i, row in enumerate(rows):
        values = (row or {}).get("values") or []
        for j, cell in enumerate(values):
            r, c = r0 + i, c0 + j
            if r >= r_end or c >= c_end:
                raise ApiError(
                    400,
                    f"{where}: Range ({tab.title}) exceeds grid limits. Max rows: {tab.row_count}, "
                    f"max columns: {tab.col_count}",
                )
            writes.append((r, c, _value(cell, where, env.poison)))
    return writes


def _update_cells(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    values = _fields(spec, where)
    if "start" in spec:
        start = spec["start"] or {}
        tab = book.by_id(start.get("sheetId", 0), where)
        r0, c0 = int(start.get("rowIndex", 0)), int(start.get("columnIndex", 0))
        writes = _write_rows(tab, r0, c0, spec.get("rows"), where, env, None)
        cleared: list[tuple[int, int, Any]] = []
    else:
        tab, r0, c0, r1, c1 = md.grid_box(book, spec.get("range") or {}, where)
        writes = _write_rows(tab, r0, c0, spec.get("rows"), where, env, (r1, c1))
        done = {(r, c) for r, c, _ in writes}
        cleared = [
            (r, c, None)
            for r in range(r0, min(r1, len(tab.rows)))
            for c in range(c0, c1)
            if (r, c) not in done
        ]
    if values:
        for r, c, value in writes + cleared:
            if value is not None or tab.cell(r, c) is not None:
                tab.set(r, c, value)
    return {}


def _append_cells(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab = book.by_id(spec.get("sheetId"), where)
    values = _fields(spec, where)
    rows = spec.get("rows") or []
    last = max((i + 1 for i, r in enumerate(tab.rows) if any(not empty(c) for c in r)), default=0)
    tab.row_count = max(tab.row_count, last + len(rows))
    writes = _write_rows(tab, last, 0, rows, where, env, None)
    if values:
        for r, c, value in writes:
            tab.set(r, c, value)
    return {}


def _repeat_cell(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    tab, r0, c0, r1, c1 = md.grid_box(book, spec.get("range") or {}, where)
    if _fields(spec, where):
        value = _value(spec.get("cell") or {}, where, env.poison)
        for r in range(r0, r1):
            for c in range(c0, c1):
                tab.set(r, c, value)
    return {}


# ----------------------------------------------------------------------------- metadata


def _create_metadata(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    meta = md.create(book, spec, where, env.rng)
    return {"createDeveloperMetadata": {"developerMetadata": meta.to_json()}}


def _update_metadata(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    metas = md.update(book, spec, where, env.options)
    return {"updateDeveloperMetadata": {"developerMetadata": [m.to_json() for m in metas]}}


def _delete_metadata(env: Env, book: Book, spec: Mapping[str, Any], where: str) -> Reply:
    metas = md.delete(book, spec, where, env.options)
    return {"deleteDeveloperMetadata": {"deletedDeveloperMetadata": [m.to_json() for m in metas]}}


_HANDLERS: dict[str, Callable[[Env, Book, Mapping[str, Any], str], Reply]] = {
    "addSheet": _add_sheet,
    "deleteSheet": _delete_sheet,
    "updateSheetProperties": _update_sheet,
    "appendDimension": _append_dimension,
    "insertDimension": _insert_dimension,
    "deleteDimension": _delete_dimension,
    "moveDimension": _move_dimension,
    "sortRange": _sort_range,
    "appendCells": _append_cells,
    "updateCells": _update_cells,
    "repeatCell": _repeat_cell,
    "createDeveloperMetadata": _create_metadata,
    "updateDeveloperMetadata": _update_metadata,
    "deleteDeveloperMetadata": _delete_metadata,
}
