"""The spreadsheet a ``spreadsheets.batchUpdate`` returns, and partial responses (``fields``).

``includeSpreadsheetInResponse`` adds ``updatedSpreadsheet`` (the spreadsheet after the
update); ``responseRanges`` (A1) limits it to the sheets and ranges named, each range becoming
one ``GridData`` of its sheet when ``responseIncludeGridData`` is true or a ``fields`` mask asks
for data (Google: "responseIncludeGridData ... is ignored if a field mask was set"). Cells are
``CellData`` with ``userEnteredValue``, ``effectiveValue`` (the fake evaluates no formula: a
formula's effective value is its text) and ``formattedValue``; trailing empty rows and cells
are left out, an empty cell inside is ``{}``.

The ``fields`` syntax of Google's partial responses is supported: ``a,b(c,d),e.f``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fake_sheets_model import ApiError, Book, Formula, Tab, empty, formatted, parse_range, props


def _typed(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int | float):
        return {"numberValue": value}
    return {"stringValue": str(value)}


def cell_data(value: Any, locale: str) -> dict[str, Any]:
    """One cell as ``CellData`` ({} when empty)."""
    if empty(value):
        return {}
    entered = {"formulaValue": str(value)} if isinstance(value, Formula) else _typed(value)
    return {
        "userEnteredValue": entered,
        "effectiveValue": _typed(value),
        "formattedValue": formatted(value, locale),
    }


def grid_data(tab: Tab, box: tuple[int, int, int, int], locale: str) -> dict[str, Any]:
    """``GridData`` for 0-based, half-open (row0, col0, row1, col1)."""
    r0, c0, r1, c1 = box
    rows: list[dict[str, Any]] = []
    for r in range(r0, min(r1, len(tab.rows))):
        values = [cell_data(tab.cell(r, c), locale) for c in range(c0, c1)]
        while values and not values[-1]:
            values.pop()
        rows.append({"values": values} if values else {})
    while rows and not rows[-1]:
        rows.pop()
    out: dict[str, Any] = {"startRow": r0, "startColumn": c0}
    if rows:
        out["rowData"] = rows
    return out


def resolve_ranges(book: Book, ranges: list[Any]) -> list[tuple[Tab, tuple[int, int, int, int]]]:
    """Each A1 range as (tab, box); an unknown title or a bad range is a 400."""
    out = []
    first = next(iter(book.tabs), "")
    for a1 in ranges:
        if not isinstance(a1, str):
            raise ApiError(400, "Invalid responseRanges: ranges must be strings")
        rng = parse_range(a1, first)
        if rng.title not in book.tabs:
            raise ApiError(400, f"Unable to parse range: {a1}")
        tab = book.tabs[rng.title]
        r1 = rng.r2 if rng.r2 is not None else tab.row_count
        c1 = rng.c2 if rng.c2 is not None else tab.col_count
        out.append((tab, ((rng.r1 or 1) - 1, (rng.c1 or 1) - 1, r1, c1)))
    return out


def spreadsheet(
    sid: str,
    book: Book,
    ranges: list[tuple[Tab, tuple[int, int, int, int]]] | None,
    with_data: bool,
) -> dict[str, Any]:
    """The ``Spreadsheet`` resource: every sheet, or those ``ranges`` touch (with their data)."""
    order = list(book.tabs.values())
    sheets = []
    for index, tab in enumerate(order):
        boxes = None if ranges is None else [b for t, b in ranges if t is tab]
        if boxes == []:
            continue
        sheet: dict[str, Any] = {"properties": props(tab, index)}
        if with_data:
            boxes = boxes or [(0, 0, tab.row_count, tab.col_count)]
            sheet["data"] = [grid_data(tab, b, book.locale) for b in boxes]
        sheets.append(sheet)
    return {
        "spreadsheetId": sid,
        "properties": {"title": f"Fake {sid}", "locale": book.locale},
        "sheets": sheets,
    }


# ----------------------------------------------------------------------------- field masks


def parse_mask(text: str) -> dict[str, Any]:
    """``a,b(c,d),e.f`` -> {"a": {}, "b": {"c": {}, "d": {}}, "e": {"f": {}}} ({} = all)."""
    mask, rest = _parse_list(text.replace(" ", ""), 0)
    if rest != len(text.replace(" ", "")):
        raise ApiError(400, f"Invalid field selection {text}")
    return mask


def _parse_list(text: str, i: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(text):
        start = i
        while i < len(text) and text[i] not in ",()":
            i += 1
        path = text[start:i].split(".")
        if not all(path):
            raise ApiError(400, f"Invalid field selection {text}")
        sub: dict[str, Any] = {}
        if i < len(text) and text[i] == "(":
            sub, i = _parse_list(text, i + 1)
            if i >= len(text) or text[i] != ")":
                raise ApiError(400, f"Invalid field selection {text}")
            i += 1
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        _merge(node, path[-1], sub)
        if i < len(text) and text[i] == ")":
            return out, i
        if i < len(text) and text[i] == ",":
            i += 1
    return out, i


def _merge(node: dict[str, Any], name: str, sub: dict[str, Any]) -> None:
    if name in node and node[name] and sub:
        for key, value in sub.items():
            _merge(node[name], key, value)
    else:
        node[name] = {} if name in node and not node[name] else sub


def apply_mask(value: Any, mask: Mapping[str, Any]) -> Any:
    """Keep only what ``mask`` selects (lists: per element)."""
    if not mask:
        return value
    if isinstance(value, list):
        return [apply_mask(v, mask) for v in value]
    if not isinstance(value, Mapping):
        return value
    return {k: apply_mask(v, mask[k]) for k, v in value.items() if k in mask}


def mask_mentions(mask: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """Whether ``mask`` selects something under ``path`` (e.g. the sheets' grid data)."""
    node: Mapping[str, Any] = mask
    for name in path:
        if name not in node:
            return False
        node = node[name]
        if not node:
            return True
    return True
