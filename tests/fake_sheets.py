"""A fake Google Sheets API v4 server, for tests and bench scripts (stdlib only, no pytest).

It keeps spreadsheets in memory and answers the endpoints a writer uses, with Google's JSON
shapes and error envelopes. It logs every call (to count requests), injects faults (429 or
503 for the next N calls, or "apply but lose the response"), rejects cells holding a
configured poison string with a 400 (to test batch splitting), and lets a test read or
change a tab's grid directly (a person sorting or inserting rows)::

    fake = FakeSheets().start()
    fake.add_spreadsheet("sid", {"Requests": [["id", "name"]]})
    # point SYNCQUEUE_SHEETS_API_URL at fake.url
    fake.stop()

Any ``Authorization`` header is accepted (and logged). ``POST /token`` hands out access
tokens, so a service-account JSON whose ``token_uri`` is ``<url>/token`` works end to end.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_CELL_CHARS = 50_000
WRITE_KINDS = frozenset(
    {"values.append", "values.batchUpdate", "values.update", "spreadsheets.batchUpdate"}
)
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_CELL = re.compile(r"^([A-Za-z]*)(\d*)$")
_PLAIN_TITLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Formula(str):
    """A value entered with ``USER_ENTERED`` that starts with ``=`` (the fake never evaluates)."""


class ApiError(Exception):
    """An error answer: HTTP status plus Google's ``error.message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Call:
    """One request the fake received."""

    method: str
    kind: str
    path: str
    query: dict[str, list[str]]
    body_bytes: int
    body: Any = None
    status: int = 0
    at: float = field(default_factory=time.time)
    authorization: str | None = None


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


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: float | None
    kinds: frozenset[str] | None
    lose: bool  # apply the request, then lose the answer
    mode: str  # for lost answers: "disconnect" or "503"


@dataclass
class _Range:
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


def parse_range(a1: str, default_title: str) -> _Range:
    """Parse ``'Tab'!A1:B2``, ``Tab!A:A``, ``Tab!1:1``, ``Tab`` or ``A1:B2`` (first tab)."""
    title, ref = _split(a1)
    title = title if title is not None else default_title
    if ref is None:
        return _Range(title, None, None, None, None)
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
    return _Range(title, r1, c1, r2, c2)


def format_range(title: str, r1: int, c1: int, r2: int, c2: int) -> str:
    """``'Tab'!A1:B2`` style text."""
    return f"{quote_title(title)}!{col_letters(c1)}{r1}:{col_letters(c2)}{r2}"


# ----------------------------------------------------------------------------- the model


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _formatted(value: Any) -> Any:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _entered(value: Any, option: str) -> Any:
    if option == "RAW" or not isinstance(value, str):
        return value
    if value.startswith("="):
        return Formula(value)
    if value.upper() in ("TRUE", "FALSE"):
        return value.upper() == "TRUE"
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


class _Book:
    """The spreadsheets; every method runs under the server's lock."""

    def __init__(self) -> None:
        self.sheets: dict[str, dict[str, Tab]] = {}
        self.next_sheet_id = 1000
        self.poison: dict[str, str] = {}

    def tabs(self, sid: str) -> dict[str, Tab]:
        if sid not in self.sheets:
            raise ApiError(404, "Requested entity was not found.")
        return self.sheets[sid]

    def tab(self, sid: str, title: str) -> Tab:
        tabs = self.tabs(sid)
        if title not in tabs:
            raise ApiError(400, f"Unable to parse range: {quote_title(title)}")
        return tabs[title]

    def range_of(self, sid: str, a1: str) -> tuple[Tab, _Range]:
        tabs = self.tabs(sid)
        first = next(iter(tabs), "")
        rng = parse_range(a1, first)
        if rng.title not in tabs:
            raise ApiError(400, f"Unable to parse range: {a1}")
        return tabs[rng.title], rng

    # -- reads

    def read(self, sid: str, a1: str, render: str) -> dict[str, Any]:
        tab, rng = self.range_of(sid, a1)
        r1, c1 = rng.r1 or 1, rng.c1 or 1
        r2 = rng.r2 if rng.r2 is not None else tab.row_count
        c2 = rng.c2 if rng.c2 is not None else tab.col_count
        if r2 > tab.row_count or c2 > tab.col_count:
            raise ApiError(
                400,
                f"Range ({a1}) exceeds grid limits. Max rows: {tab.row_count}, "
                f"max columns: {tab.col_count}",
            )
        values: list[list[Any]] = []
        for row in tab.rows[r1 - 1 : r2]:
            cells = [
                c if render == "UNFORMATTED_VALUE" else _formatted(c) for c in row[c1 - 1 : c2]
            ]
            cells = ["" if c is None else c for c in cells]
            while cells and _empty(cells[-1]):
                cells.pop()
            values.append(cells)
        while values and not values[-1]:
            values.pop()
        out: dict[str, Any] = {
            "range": format_range(tab.title, r1, c1, r2, c2),
            "majorDimension": "ROWS",
        }
        if values:
            out["values"] = values
        return out

    # -- value writes

    def _check_cell(self, value: Any, where: str) -> None:
        if isinstance(value, str):
            if value in self.poison:
                raise ApiError(400, f"{where}: {self.poison[value]}")
            if len(value) > MAX_CELL_CHARS:
                raise ApiError(
                    400,
                    f"{where}: Your input contains more than the maximum of "
                    f"{MAX_CELL_CHARS} characters in a single cell.",
                )
        elif value is not None and not isinstance(value, int | float | bool):
            raise ApiError(400, f"{where}: Invalid value at 'data.values' ({type(value).__name__})")

    def plan_write(
        self, sid: str, a1: str, values: list[list[Any]], where: str
    ) -> list[tuple[Tab, int, int, Any]]:
        """Validate one ValueRange; return its cell writes (tab, row, col, raw value)."""
        if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
            raise ApiError(400, f"{where}: Invalid values")
        tab, rng = self.range_of(sid, a1)
        r1, c1 = rng.r1 or 1, rng.c1 or 1
        height, width = len(values), max((len(r) for r in values), default=0)
        if rng.r2 is not None and r1 + height - 1 > rng.r2:
            raise ApiError(
                400,
                f"{where}: Requested writing within range [{a1}], but tried writing to row "
                f"[{r1 + height - 1}]",
            )
        if rng.c2 is not None and c1 + width - 1 > rng.c2:
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
                self._check_cell(value, where)
                if value is not None:
                    cells.append((tab, r1 + i, c1 + j, value))
        return cells

    @staticmethod
    def put(cells: Iterable[tuple[Tab, int, int, Any]], option: str) -> None:
        for tab, r, c, value in cells:
            while len(tab.rows) < r:
                tab.rows.append([])
            row = tab.rows[r - 1]
            while len(row) < c:
                row.append("")
            row[c - 1] = _entered(value, option)

    def batch_update_values(self, sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        option = _input_option(body.get("valueInputOption"))
        planned, responses = [], []
        for i, vr in enumerate(body.get("data") or []):
            cells = self.plan_write(
                sid, str(vr.get("range", "")), vr.get("values") or [], f"Invalid data[{i}]"
            )
            planned.append(cells)
            tab, rng = self.range_of(sid, str(vr["range"]))
            rows = {r for _, r, _, _ in cells}
            cols = {c for _, _, c, _ in cells}
            responses.append(
                {
                    "spreadsheetId": sid,
                    "updatedRange": format_range(
                        tab.title,
                        min(rows, default=rng.r1 or 1),
                        min(cols, default=rng.c1 or 1),
                        max(rows, default=rng.r1 or 1),
                        max(cols, default=rng.c1 or 1),
                    ),
                    "updatedRows": len(rows),
                    "updatedColumns": len(cols),
                    "updatedCells": len(cells),
                }
            )
        for cells in planned:  # all sub-requests valid: apply them all
            self.put(cells, option)
        return {
            "spreadsheetId": sid,
            "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
            "totalUpdatedColumns": sum(r["updatedColumns"] for r in responses),
            "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
            "totalUpdatedSheets": len({r["updatedRange"].rpartition("!")[0] for r in responses}),
            "responses": responses,
        }

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
                self._check_cell(value, f"Invalid values[{i}]")
        last = max(
            (i + 1 for i, r in enumerate(tab.rows) if any(not _empty(c) for c in r)), default=0
        )
        start = max(last + 1, rng.r1 or 1)
        n = len(values)
        if insert == "INSERT_ROWS":
            while len(tab.rows) < start - 1:
                tab.rows.append([])
            tab.rows[start - 1 : start - 1] = [[] for _ in range(n)]
            tab.row_count += n
        else:
            tab.row_count = max(tab.row_count, start + n - 1)
        cells = [
            (tab, start + i, c1 + j, v)
            for i, row in enumerate(values)
            for j, v in enumerate(row)
            if v is not None
        ]
        self.put(cells, option)
        out: dict[str, Any] = {
            "spreadsheetId": sid,
            "updates": {
                "spreadsheetId": sid,
                "updatedRange": format_range(tab.title, start, c1, start + n - 1, c1 + width - 1),
                "updatedRows": n,
                "updatedColumns": width,
                "updatedCells": len(cells),
            },
        }
        if last:
            out["tableRange"] = format_range(tab.title, 1, c1, last, c1 + width - 1)
        return out

    # -- structure

    def batch_update(self, sid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        tabs = self.tabs(sid)
        saved = {t: tab.copy() for t, tab in tabs.items()}
        saved_next = self.next_sheet_id
        try:
            replies = [
                self._structural(sid, i, req) for i, req in enumerate(body.get("requests") or [])
            ]
        except ApiError:
            self.sheets[sid] = saved  # atomic: nothing applied
            self.next_sheet_id = saved_next
            raise
        return {"spreadsheetId": sid, "replies": replies}

    def _by_id(self, sid: str, sheet_id: Any, where: str) -> Tab:
        for tab in self.sheets[sid].values():
            if tab.sheet_id == sheet_id:
                return tab
        raise ApiError(400, f"{where}: No grid with id: {sheet_id}")

    def _structural(self, sid: str, i: int, req: Mapping[str, Any]) -> dict[str, Any]:
        where = f"Invalid requests[{i}]"
        if "addSheet" in req:
            props = dict(req["addSheet"].get("properties") or {})
            title = str(props.get("title") or f"Sheet{self.next_sheet_id}")
            if title in self.sheets[sid]:
                raise ApiError(
                    400,
                    f'{where}.addSheet: A sheet with the name "{title}" already exists. '
                    "Please enter another name.",
                )
            grid = props.get("gridProperties") or {}
            tab = self.add_tab(
                sid,
                title,
                None,
                int(grid.get("rowCount", 1000)),
                int(grid.get("columnCount", 26)),
                props.get("sheetId"),
            )
            return {"addSheet": {"properties": _props(tab, len(self.sheets[sid]) - 1)}}
        if "appendDimension" in req:
            spec = req["appendDimension"]
            tab = self._by_id(sid, spec.get("sheetId"), where + ".appendDimension")
            length = int(spec.get("length", 0))
            if length <= 0:
                raise ApiError(400, f"{where}.appendDimension: length must be positive")
            if spec.get("dimension") == "COLUMNS":
                tab.col_count += length
            else:
                tab.row_count += length
            return {}
        for op in ("deleteDimension", "insertDimension"):
            if op in req:
                rng = req[op].get("range") or {}
                tab = self._by_id(sid, rng.get("sheetId"), f"{where}.{op}")
                start, end = int(rng.get("startIndex", 0)), int(rng.get("endIndex", 0))
                rows = rng.get("dimension") == "ROWS"
                limit = tab.row_count if rows else tab.col_count
                if not 0 <= start < end or (op == "deleteDimension" and end > limit):
                    raise ApiError(
                        400,
                        f"{where}.{op}: Invalid dimension range [{start}, {end}) (limit {limit})",
                    )
                if op == "deleteDimension" and rows:
                    del tab.rows[start:end]
                    tab.row_count -= end - start
                elif op == "deleteDimension":
                    for row in tab.rows:
                        del row[start:end]
                    tab.col_count -= end - start
                elif rows:
                    tab.rows[start:start] = [[] for _ in range(end - start)]
                    tab.row_count += end - start
                else:
                    for row in tab.rows:
                        row[start:start] = [""] * (end - start) if len(row) > start else []
                    tab.col_count += end - start
                return {}
        raise ApiError(400, f"{where}: unsupported request {sorted(req)}")

    def add_tab(
        self,
        sid: str,
        title: str,
        rows: list[list[Any]] | None,
        row_count: int,
        col_count: int,
        sheet_id: Any = None,
    ) -> Tab:
        if sheet_id is None:
            sheet_id = self.next_sheet_id
            self.next_sheet_id += 1
        tab = Tab(
            int(sheet_id),
            title,
            [list(r) for r in rows or []],
            max(row_count, len(rows or [])),
            col_count,
        )
        self.sheets.setdefault(sid, {})[title] = tab
        return tab

    def metadata(self, sid: str) -> dict[str, Any]:
        tabs = self.tabs(sid)
        return {
            "spreadsheetId": sid,
            "properties": {"title": f"Fake {sid}", "locale": "en_US", "timeZone": "Etc/GMT"},
            "sheets": [{"properties": _props(tab, i)} for i, tab in enumerate(tabs.values())],
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{sid}/edit",
        }


def _props(tab: Tab, index: int) -> dict[str, Any]:
    return {
        "sheetId": tab.sheet_id,
        "title": tab.title,
        "index": index,
        "sheetType": "GRID",
        "gridProperties": {"rowCount": tab.row_count, "columnCount": tab.col_count},
    }


def _q(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _input_option(option: Any) -> str:
    if option not in ("RAW", "USER_ENTERED"):
        raise ApiError(400, "'valueInputOption' is required but not specified")
    return str(option)


# ----------------------------------------------------------------------------- HTTP


def _classify(method: str, path: str) -> tuple[str, str, str | None]:
    """Return (kind, spreadsheet id, range) for a /v4/spreadsheets path ('' kind if unknown)."""
    prefix = "/v4/spreadsheets/"
    if path == "/token" and method == "POST":
        return "oauth.token", "", None
    if not path.startswith(prefix):
        return "", "", None
    rest = path[len(prefix) :]
    head, _, tail = rest.partition("/")
    if not tail:
        if head.endswith(":batchUpdate") and method == "POST":
            return "spreadsheets.batchUpdate", unquote(head[: -len(":batchUpdate")]), None
        return ("spreadsheets.get" if method == "GET" else ""), unquote(head), None
    sid = unquote(head)
    if tail == "values:batchGet" and method == "GET":
        return "values.batchGet", sid, None
    if tail == "values:batchUpdate" and method == "POST":
        return "values.batchUpdate", sid, None
    if tail.startswith("values/"):
        raw = tail[len("values/") :]
        if raw.endswith(":append") and method == "POST":
            return "values.append", sid, unquote(raw[: -len(":append")])
        if method == "GET":
            return "values.get", sid, unquote(raw)
        if method == "PUT":
            return "values.update", sid, unquote(raw)
    return "", sid, None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive connections
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _reply(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self._reply(
            code,
            {"error": {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}},
            headers,
        )

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind, sid, a1 = _classify(method, split.path)
        try:
            body = json.loads(raw) if raw and kind != "oauth.token" else {}
        except ValueError:
            body = None
        auth = self.headers.get("Authorization")
        call = Call(method, kind, unquote(split.path), query, len(raw), body, authorization=auth)
        if fake.delay:
            time.sleep(fake.delay)
        with fake.lock:
            fake.calls.append(call)
            fault = fake._take_fault(kind)
            if fault is not None and not fault.lose:
                call.status = fault.status
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                )
                message = (
                    "Quota exceeded for quota metric 'Write requests' and limit 'Write requests "
                    "per minute per user' of service 'sheets.googleapis.com'"
                    if fault.status == 429
                    else "The service is currently unavailable."
                )
                self._error(fault.status, message, headers)
                return
            try:
                if kind == "" or body is None:
                    raise ApiError(
                        404 if kind == "" else 400,
                        "Not found" if kind == "" else "Invalid JSON payload received.",
                    )
                result = fake._dispatch(kind, sid, a1, query, body)
            except ApiError as exc:
                call.status = exc.code
                self._error(exc.code, exc.message)
                return
            if fault is not None:  # applied, but the answer is lost
                call.status = -1
                if fault.mode == "503":
                    self._error(503, "The service is currently unavailable.")
                else:
                    self.close_connection = True
                return
            call.status = 200
        self._reply(200, result)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSheets


class FakeSheets:
    """The fake server. ``start()`` binds 127.0.0.1 on a free port; ``url`` is its base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._book = _Book()
        self._faults: list[_Fault] = []
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.delay = 0.0  # seconds to sleep before handling each request

    # -- lifecycle

    def start(self) -> FakeSheets:
        """Start serving in a daemon thread; returns self."""
        server = _Server(self._address, _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-sheets",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeSheets:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43125`` (the API lives under ``/v4/``)."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- data

    def add_spreadsheet(self, sid: str, tabs: Mapping[str, list[list[Any]]] | None = None) -> None:
        """Create (or reset) a spreadsheet with the given tabs (title -> rows)."""
        with self.lock:
            self._book.sheets[sid] = {}
            for title, rows in (tabs or {}).items():
                self._book.add_tab(sid, title, rows, 1000, 26)

    def add_tab(
        self,
        sid: str,
        title: str,
        rows: list[list[Any]] | None = None,
        row_count: int = 1000,
        col_count: int = 26,
    ) -> int:
        """Add a tab; return its sheetId."""
        with self.lock:
            return self._book.add_tab(sid, title, rows, row_count, col_count).sheet_id

    def tab(self, sid: str, title: str) -> Tab:
        """The live tab object; change it only inside ``with fake.lock:``."""
        with self.lock:
            return self._book.tab(sid, title)

    def rows(self, sid: str, title: str) -> list[list[Any]]:
        """A copy of the tab's cells, trailing empty cells and rows trimmed."""
        with self.lock:
            out = []
            for row in self._book.tab(sid, title).rows:
                cells = list(row)
                while cells and _empty(cells[-1]):
                    cells.pop()
                out.append(cells)
            while out and not out[-1]:
                out.pop()
            return out

    def set_rows(self, sid: str, title: str, rows: list[list[Any]]) -> None:
        """Replace the tab's cells (a person editing, sorting or inserting rows)."""
        with self.lock:
            tab = self._book.tab(sid, title)
            tab.rows = [list(r) for r in rows]
            tab.row_count = max(tab.row_count, len(rows))

    def records(self, sid: str, title: str, id_column: str = "id") -> list[dict[str, Any]]:
        """Rows below the header as dicts (header -> value), in sheet order, blank rows skipped."""
        rows = self.rows(sid, title)
        if not rows:
            return []
        header = rows[0]
        out = []
        for row in rows[1:]:
            if any(not _empty(c) for c in row):
                out.append({h: (row[i] if i < len(row) else "") for i, h in enumerate(header) if h})
        return out

    def find(
        self, sid: str, title: str, record_id: str, id_column: str = "id"
    ) -> list[dict[str, Any]]:
        """Every row whose id cell equals ``record_id``."""
        return [
            r for r in self.records(sid, title, id_column) if str(r.get(id_column, "")) == record_id
        ]

    # -- faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        retry_after: float | None = None,
        kinds: Iterable[str] | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (not applied)."""
        with self.lock:
            self._faults.append(
                _Fault(n, status, retry_after, frozenset(kinds) if kinds else None, False, "")
            )

    def lose_next(
        self, n: int = 1, kinds: Iterable[str] | None = None, mode: str = "disconnect"
    ) -> None:
        """Apply the next ``n`` matching requests, then drop the connection (or answer 503)."""
        assert mode in ("disconnect", "503")
        with self.lock:
            self._faults.append(
                _Fault(n, 503, None, frozenset(kinds) if kinds else None, True, mode)
            )

    def poison(self, value: str, message: str = "This value is not allowed here.") -> None:
        """Any write sub-request holding a cell equal to ``value`` fails with a 400."""
        with self.lock:
            self._book.poison[value] = message

    def clear_faults(self) -> None:
        """Forget pending faults and poison values."""
        with self.lock:
            self._faults.clear()
            self._book.poison.clear()

    def _take_fault(self, kind: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.kinds is None or kind in fault.kinds):
                fault.remaining -= 1
                return fault
        return None

    # -- call log

    def reset_calls(self) -> None:
        """Clear the call log."""
        with self.lock:
            self.calls.clear()

    def count(self, kinds: Iterable[str] | None = None) -> int:
        """Requests received (of the given kinds)."""
        wanted = set(kinds) if kinds is not None else None
        with self.lock:
            return sum(1 for c in self.calls if wanted is None or c.kind in wanted)

    @contextmanager
    def paused_log(self) -> Iterator[None]:
        """Run a block whose calls are not kept in the log."""
        with self.lock:
            before = len(self.calls)
        try:
            yield
        finally:
            with self.lock:
                del self.calls[before:]

    def _dispatch(
        self, kind: str, sid: str, a1: str | None, query: dict[str, list[str]], body: Any
    ) -> Any:
        book = self._book
        if kind == "oauth.token":  # a service account's JWT grant (token_uri = url + /token)
            token = f"fake-token-{len(self.calls)}"
            return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        if kind == "spreadsheets.get":
            return book.metadata(sid)
        if kind == "values.get":
            return book.read(sid, a1 or "", _q(query, "valueRenderOption") or "FORMATTED_VALUE")
        if kind == "values.batchGet":
            render = _q(query, "valueRenderOption") or "FORMATTED_VALUE"
            ranges = [book.read(sid, r, render) for r in query.get("ranges", [])]
            return {"spreadsheetId": sid, "valueRanges": ranges}
        if kind == "values.batchUpdate":
            return book.batch_update_values(sid, body)
        if kind == "values.update":
            return book.update_values(sid, a1 or "", query, body)
        if kind == "values.append":
            return book.append(sid, a1 or "", query, body)
        if kind == "spreadsheets.batchUpdate":
            return book.batch_update(sid, body)
        raise ApiError(404, "Not found")
