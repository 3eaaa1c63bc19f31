"""The fake Sheets API's spreadsheets and the methods that read and write them.

Every method runs under the server's lock. A request that writes is validated as a whole and
applied atomically: ``values.batchUpdate`` / ``batchUpdateByDataFilter`` plan every cell before
writing any, ``spreadsheets.batchUpdate`` works on a copy of the spreadsheet that replaces it
only when every subrequest succeeded.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import fake_sheets_batch as batch
import fake_sheets_metadata as md
import fake_sheets_response as response
from fake_sheets_model import (
    ApiError,
    Book,
    Options,
    Tab,
    check_cell,
    col_letters,
    empty,
    entered,
    format_range,
    formatted,
    parse_range,
    props,
    quote_title,
)

Cell = tuple[Tab, int, int, Any]  # tab, 1-based row, 1-based column, raw value


def _q(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _input_option(option: Any) -> str:
    if option not in ("RAW", "USER_ENTERED"):
        raise ApiError(400, "'valueInputOption' is required but not specified")
    return str(option)


class Store:
    """All spreadsheets of the fake server, by spreadsheet id."""

    def __init__(self, options: Options | None = None, seed: int = 0) -> None:
        self.books: dict[str, Book] = {}
        self.next_sheet_id = 1000
        self.poison: dict[str, str] = {}
        self.options = options or Options()
        self.rng = random.Random(seed)

    def new_sheet_id(self) -> int:
        self.next_sheet_id += 1
        return self.next_sheet_id - 1

    def book(self, sid: str) -> Book:
        if sid not in self.books:
            raise ApiError(404, "Requested entity was not found.")
        return self.books[sid]

    def tab(self, sid: str, title: str) -> Tab:
        tabs = self.book(sid).tabs
        if title not in tabs:
            raise ApiError(400, f"Unable to parse range: {quote_title(title)}")
        return tabs[title]

    def range_of(self, sid: str, a1: str) -> tuple[Tab, Any]:
        tabs = self.book(sid).tabs
        rng = parse_range(a1, next(iter(tabs), ""))
        if rng.title not in tabs:
            raise ApiError(400, f"Unable to parse range: {a1}")
        return tabs[rng.title], rng

    def add_tab(
        self, sid: str, title: str, rows: list[list[Any]] | None, row_count: int, col_count: int
    ) -> Tab:
        rows = [list(r) for r in rows or []]
        tab = Tab(self.new_sheet_id(), title, rows, max(row_count, len(rows)), col_count)
        self.books.setdefault(sid, Book()).tabs[title] = tab
        return tab

    # -- reads

    def _values(
        self, sid: str, tab: Tab, box: tuple[int, int, int, int], render: str
    ) -> dict[str, Any]:
        """A ValueRange for 0-based (row0, col0, row1, col1), trailing blanks trimmed."""
        r0, c0, r1, c1 = box
        locale = self.book(sid).locale
        values: list[list[Any]] = []
        for row in tab.rows[r0:r1]:
            cells = [
                c if render == "UNFORMATTED_VALUE" else formatted(c, locale) for c in row[c0:c1]
            ]
            cells = ["" if c is None else c for c in cells]
            while cells and empty(cells[-1]):
                cells.pop()
            values.append(cells)
        while values and not values[-1]:
            values.pop()
        out: dict[str, Any] = {
            "range": format_range(tab.title, r0 + 1, c0 + 1, r1, c1),
            "majorDimension": "ROWS",
        }
        if values:
            out["values"] = values
        return out

    def read(self, sid: str, a1: str, render: str) -> dict[str, Any]:
        tab, rng = self.range_of(sid, a1)
        r2 = rng.r2 if rng.r2 is not None else tab.row_count
        c2 = rng.c2 if rng.c2 is not None else tab.col_count
        if r2 > tab.row_count or c2 > tab.col_count:
            raise ApiError(
                400,
                f"Range ({a1}) exceeds grid limits. Max rows: {tab.row_count}, "
                f"max columns: {tab.col_count}",
            )
        return self._values(sid, tab, ((rng.r1 or 1) - 1, (rng.c1 or 1) - 1, r2, c2), render)

    def batch_get_by_filter(self, sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        render = body.get("valueRenderOption") or "FORMATTED_VALUE"
        book = self.book(sid)
        matched = []
        for i, data_filter in enumerate(body.get("dataFilters") or []):
            for tab, *box in md.filter_boxes(book, data_filter, f"Invalid dataFilters[{i}]"):
                value_range = self._values(sid, tab, tuple(box), render)  # type: ignore[arg-type]
                matched.append({"valueRange": value_range, "dataFilters": [data_filter]})
        out: dict[str, Any] = {"spreadsheetId": sid}
        if matched:
            out["valueRanges"] = matched
        return out

    def metadata(self, sid: str) -> dict[str, Any]:
        book = self.book(sid)
        return {
            "spreadsheetId": sid,
            "properties": {"title": f"Fake {sid}", "locale": book.locale, "timeZone": "Etc/GMT"},
            "sheets": [{"properties": props(tab, i)} for i, tab in enumerate(book.tabs.values())],
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{sid}/edit",
        }

    # -- value writes

    def plan_write(
        self, tab: Tab, box: tuple[int, int, int | None, int | None], values: Any, where: str
    ) -> list[Cell]:
        """Validate one ValueRange written at 1-based (r1, c1), within (r2, c2) if given."""
        if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
            raise ApiError(400, f"{where}: Invalid values")
        r1, c1, r2, c2 = box
        height, width = len(values), max((len(r) for r in values), default=0)
        a1 = format_range(tab.title, r1, c1, r2 or r1, c2 or c1)
        if r2 is not None and r1 + height - 1 > r2:
            raise ApiError(
                400,
                f"{where}: Requested writing within range [{a1}], but tried writing to row "
                f"[{r1 + height - 1}]",
            )
        if c2 is not None and c1 + width - 1 > c2:
            raise ApiError(
                400,
                f"{where}: Requested writing within range [{a1}], but tried writing to column "
                f"[{col_letters(c1 + width - 1)}]",
            )
        if r1 + height - 1 > tab.row_count or c1 + width - 1 > tab.col_count:
            raise ApiError(
                400,
                f"{where}: Range ({a1}) exceeds grid limits. Max rows: {tab.row_count}, "
                f"max columns: {tab.col_count}",
            )
        cells = []
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                check_cell(value, where, self.poison)
                if value is not None:  # null: skipped, as Google documents
                    cells.append((tab, r1 + i, c1 + j, value))
        return cells

    @staticmethod
    def put(cells: Iterable[Cell], option: str) -> None:
        for tab, r, c, value in cells:
            tab.set(r - 1, c - 1, entered(value, option))

    @staticmethod
    def _summary(sid: str, tab: Tab, cells: list[Cell], anchor: tuple[int, int]) -> dict[str, Any]:
        rows = {r for _, r, _, _ in cells} or {anchor[0]}
        cols = {c for _, _, c, _ in cells} or {anchor[1]}
        return {
            "spreadsheetId": sid,
            "updatedRange": format_range(tab.title, min(rows), min(cols), max(rows), max(cols)),
            "updatedRows": len({r for _, r, _, _ in cells}),
            "updatedColumns": len({c for _, _, c, _ in cells}),
            "updatedCells": len(cells),
        }

    @staticmethod
    def _totals(sid: str, responses: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "spreadsheetId": sid,
            "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
            "totalUpdatedColumns": sum(r["updatedColumns"] for r in responses),
            "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
            "totalUpdatedSheets": len({r["updatedRange"].rpartition("!")[0] for r in responses}),
            "responses": responses,
        }

    def batch_update_values(self, sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        option = _input_option(body.get("valueInputOption"))
        planned, responses = [], []
        for i, vr in enumerate(body.get("data") or []):
            tab, rng = self.range_of(sid, str(vr.get("range", "")))
            r1, c1 = rng.r1 or 1, rng.c1 or 1
            cells = self.plan_write(
                tab, (r1, c1, rng.r2, rng.c2), vr.get("values") or [], f"Invalid data[{i}]"
            )
            planned.append(cells)
            responses.append(self._summary(sid, tab, cells, (r1, c1)))
        for cells in planned:  # all sub-requests valid: apply them all
            self.put(cells, option)
        return self._totals(sid, responses)

    def batch_update_by_filter(self, sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """values:batchUpdateByDataFilter: each filter's values go to every range it selects."""
        option = _input_option(body.get("valueInputOption"))
        book = self.book(sid)
        planned, responses = [], []
        for i, dfvr in enumerate(body.get("data") or []):
            where = f"Invalid data[{i}]"
            data_filter = dfvr.get("dataFilter") or {}
            boxes = md.filter_boxes(book, data_filter, where)
            if not boxes and self.options.unmatched_filter == "error":
                raise ApiError(400, f"{where}: No ranges match the data filter")
            for tab, r0, c0, r1, c1 in boxes:
                cells = self.plan_write(
                    tab, (r0 + 1, c0 + 1, r1, c1), dfvr.get("values") or [], where
                )
                planned.append(cells)
                summary = self._summary(sid, tab, cells, (r0 + 1, c0 + 1))
                del summary["spreadsheetId"]
                responses.append({**summary, "dataFilter": data_filter})
        for cells in planned:
            self.put(cells, option)
        return self._totals(sid, responses)

    def update_values(
        self, sid: str, a1: str, query: Mapping[str, list[str]], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        option = _input_option(_q(query, "valueInputOption"))
        return self.batch_update_values(
            sid,
            {
                "valueInputOption": option,
                "data": [{"range": a1, "values": body.get("values") or []}],
            },
        )["responses"][0]

    def append(
        self, sid: str, a1: str, query: Mapping[str, list[str]], body: Mapping[str, Any]
    ) -> dict[str, Any]:
        option = _input_option(_q(query, "valueInputOption"))
        insert = _q(query, "insertDataOption") or "OVERWRITE"
        tab, rng = self.range_of(sid, a1)
        values = body.get("values") or []
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(r, list) for r in values)
        ):
            raise ApiError(400, "Invalid values: at least one row is required")
        c1 = rng.c1 or 1
        width = max(len(r) for r in values)
        if c1 + width - 1 > tab.col_count:
            raise ApiError(
                400,
                f"Range ({quote_title(tab.title)}!{col_letters(c1 + width - 1)}1) exceeds grid "
                f"limits. Max rows: {tab.row_count}, max columns: {tab.col_count}",
            )
        for i, row in enumerate(values):
            for value in row:
                check_cell(value, f"Invalid values[{i}]", self.poison)
        last = max(
            (i + 1 for i, r in enumerate(tab.rows) if any(not empty(c) for c in r)), default=0
        )
        start = max(last + 1, rng.r1 or 1)
        n = len(values)
        grown = max(0, start + n - 1 - tab.row_count) if insert != "INSERT_ROWS" else n
        self.book(sid).check_cells(self.options.max_cells, grown * tab.col_count)
        if insert == "INSERT_ROWS":  # rows (and their metadata) below move down
            self.apply_batch(
                sid,
                [
                    {
                        "insertDimension": {
                            "range": {
                                "sheetId": tab.sheet_id,
                                "dimension": "ROWS",
                                "startIndex": start - 1,
                                "endIndex": start - 1 + n,
                            }
                        }
                    }
                ],
            )
        else:
            tab.row_count = max(tab.row_count, start + n - 1)
        cells = [
            (tab, start + i, c1 + j, v)
            for i, row in enumerate(values)
            for j, v in enumerate(row)
            if v is not None
        ]
        self.put(cells, option)
        summary = self._summary(sid, tab, cells, (start, c1))
        summary["updatedRange"] = format_range(tab.title, start, c1, start + n - 1, c1 + width - 1)
        summary["updatedRows"], summary["updatedColumns"] = n, width
        out: dict[str, Any] = {"spreadsheetId": sid, "updates": summary}
        if last:
            out["tableRange"] = format_range(tab.title, 1, c1, last, c1 + width - 1)
        return out

    # -- structure

    def apply_batch(self, sid: str, requests: list[Any]) -> list[dict[str, Any]]:
        """spreadsheets.batchUpdate's subrequests, all or nothing."""
        book = self.book(sid)
        saved, saved_next = book.copy(), self.next_sheet_id
        try:
            return batch.apply(self, book, requests)
        except ApiError:
            self.books[sid], self.next_sheet_id = saved, saved_next  # nothing applied
            raise

    def batch_update(
        self, sid: str, body: Mapping[str, Any], fields: str | None = None
    ) -> dict[str, Any]:
        """Apply the subrequests; with ``includeSpreadsheetInResponse`` answer the spreadsheet
        after them too (``fake_sheets_response``). A response range that does not resolve is a
        400; by ``Options.response_range_error`` nothing was applied ("refuse") or the update
        stays applied ("after") — the documentation does not say which."""
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(400, "Invalid requests: at least one request is required")
        mask = response.parse_mask(fields) if fields else None
        saved, saved_next = self.book(sid).copy(), self.next_sheet_id
        out: dict[str, Any] = {"spreadsheetId": sid, "replies": self.apply_batch(sid, requests)}
        if body.get("includeSpreadsheetInResponse"):
            ranges = body.get("responseRanges") or None
            try:
                resolved = (
                    None if ranges is None else response.resolve_ranges(self.book(sid), ranges)
                )
            except ApiError:
                if self.options.response_range_error == "refuse":
                    self.books[sid], self.next_sheet_id = saved, saved_next
                raise
            with_data = (
                bool(body.get("responseIncludeGridData"))
                if mask is None
                else (response.mask_mentions(mask, ("updatedSpreadsheet", "sheets", "data")))
            )
            out["updatedSpreadsheet"] = response.spreadsheet(
                sid, self.book(sid), resolved, with_data
            )
        return out if mask is None else response.apply_mask(out, mask)
