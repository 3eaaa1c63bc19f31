"""A fake Google Sheets API v4 server, for tests and bench scripts (stdlib only, no pytest).

It keeps spreadsheets in memory and answers the endpoints a writer uses, with Google's JSON
shapes and error envelopes::

    fake = FakeSheets(quota=Quota(time_factor=30)).start()
    fake.add_spreadsheet("sid", {"Requests": [["id", "name"]]}, locale="de_DE")
    # point SYNCQUEUE_SHEETS_API_URL at fake.url
    fake.stop()

What it models (details: /work/notes/sheets-research.md):

- values get / batchGet / update / batchUpdate / append, ``values:batchGetByDataFilter`` and
  ``values:batchUpdateByDataFilter`` (reads render FORMATTED_VALUE by the spreadsheet's locale,
  or UNFORMATTED_VALUE; numbers are doubles);
- ``spreadsheets.batchUpdate`` validated as a whole and applied atomically, in order
  (``fake_sheets_batch``), developer metadata that follows its row (``fake_sheets_metadata``),
  ``developerMetadata:search`` and ``developerMetadata/{id}``;
- tabs found by title in A1 ranges (a renamed tab's old title is a 400), by id elsewhere;
- a per-account quota (``fake_sheets_quota.Quota``), checked before anything else: a refused
  request gets Google's 429 and is not applied; admitted requests may then meet the injected
  faults (429/503 for the next N calls, or "apply but lose the response") and poison values;
- a scriptable person (:attr:`FakeSheets.person`) who acts between a read and the next write
  to the same spreadsheet, using the person's actions below (which move metadata as Google does).

``POST /token`` hands out access tokens for a service account's JWT grant and remembers the
account (the JWT's ``iss``): the quota is per account. Requests without a known token count for
the account ``"anonymous"``.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also for bench scripts

import fake_sheets_metadata as md
from fake_sheets_model import (
    MAX_CELL_CHARS,
    ApiError,
    Book,
    Formula,
    Options,
    Tab,
    col_letters,
    col_number,
    empty,
    format_range,
    parse_range,
    quote_title,
)
from fake_sheets_quota import Quota
from fake_sheets_store import Store, _q

__all__ = [
    "MAX_CELL_CHARS",
    "READ_KINDS",
    "WRITE_KINDS",
    "ApiError",
    "Call",
    "FakeSheets",
    "Formula",
    "Options",
    "Quota",
    "Tab",
    "col_letters",
    "col_number",
    "format_range",
    "parse_range",
    "quote_title",
]

WRITE_KINDS = frozenset(
    {
        "values.append",
        "values.batchUpdate",
        "values.update",
        "values.batchUpdateByDataFilter",
        "spreadsheets.batchUpdate",
    }
)
READ_KINDS = frozenset(
    {
        "spreadsheets.get",
        "values.get",
        "values.batchGet",
        "values.batchGetByDataFilter",
        "developerMetadata.search",
        "developerMetadata.get",
    }
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
_POST_ROUTES = {
    ":batchUpdate": "spreadsheets.batchUpdate",
    "values:batchUpdate": "values.batchUpdate",
    "values:batchGetByDataFilter": "values.batchGetByDataFilter",
    "values:batchUpdateByDataFilter": "values.batchUpdateByDataFilter",
    "developerMetadata:search": "developerMetadata.search",
}
Person = Callable[["FakeSheets", str], None]


@dataclass
class Call:
    """One request the fake received (status 429 with ``quota`` set: refused by the quota)."""

    method: str
    kind: str
    path: str
    query: dict[str, list[str]]
    body_bytes: int
    body: Any = None
    status: int = 0
    at: float = field(default_factory=time.time)
    authorization: str | None = None
    account: str = "anonymous"
    quota: bool = False


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: float | None
    kinds: frozenset[str] | None
    lose: bool  # apply the request, then lose the answer
    mode: str  # for lost answers: "disconnect" or "503"


def _classify(method: str, path: str) -> tuple[str, str, str | None]:
    """Return (kind, spreadsheet id, range or metadata id) for a path ('' kind if unknown)."""
    prefix = "/v4/spreadsheets/"
    if path == "/token" and method == "POST":
        return "oauth.token", "", None
    if not path.startswith(prefix):
        return "", "", None
    head, _, tail = path[len(prefix) :].partition("/")
    if not tail and head.endswith(":batchUpdate") and method == "POST":
        return "spreadsheets.batchUpdate", unquote(head[: -len(":batchUpdate")]), None
    if not tail:
        return ("spreadsheets.get" if method == "GET" else ""), unquote(head), None
    sid = unquote(head)
    if method == "POST" and tail in _POST_ROUTES:
        return _POST_ROUTES[tail], sid, None
    if tail == "values:batchGet" and method == "GET":
        return "values.batchGet", sid, None
    if tail.startswith("developerMetadata/") and method == "GET":
        return "developerMetadata.get", sid, tail.partition("/")[2]
    if tail.startswith("values/"):
        raw = tail[len("values/") :]
        if raw.endswith(":append") and method == "POST":
            return "values.append", sid, unquote(raw[: -len(":append")])
        if method == "GET":
            return "values.get", sid, unquote(raw)
        if method == "PUT":
            return "values.update", sid, unquote(raw)
    return "", sid, None


def _jwt_issuer(form: bytes) -> str | None:
    """The ``iss`` of a JWT-bearer grant's assertion (signature not checked)."""
    assertion = parse_qs(form.decode(errors="replace")).get("assertion", [""])[0]
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


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
        kind, sid, target = _classify(method, split.path)
        try:
            body = json.loads(raw) if raw and kind != "oauth.token" else {}
        except ValueError:
            body = None
        auth = self.headers.get("Authorization")
        call = Call(method, kind, unquote(split.path), query, len(raw), body, authorization=auth)
        if fake.delay:
            time.sleep(fake.delay)
        with fake.lock:
            call.account = fake._account(auth)
            fake.calls.append(call)
            if fake._refused_by_quota(call, self):
                return
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
                if kind == "oauth.token":
                    result = fake._token(raw)
                else:
                    fake._person_acts(kind, sid)
                    result = fake._dispatch(kind, sid, target, query, body, call.body_bytes)
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
    """The fake server. ``start()`` binds 127.0.0.1 on a free port; ``url`` is its base URL.

    ``options`` sets the points the documentation leaves open (metadata and sort/move, an
    unmatched filter, metadata limits, subrequest and body caps); ``quota`` enables the
    per-account quota (None: unlimited, as before).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        options: Options | None = None,
        quota: Quota | None = None,
    ) -> None:
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._store = Store(options)
        self._faults: list[_Fault] = []
        self._tokens: dict[str, str] = {}  # access token -> account
        self._read_since_write: set[str] = set()
        self._chaos: tuple[float, random.Random] | None = None
        self.lock = threading.RLock()
        self.calls: list[Call] = []
        self.delay = 0.0  # seconds to sleep before handling each request
        self.quota = quota
        self.person: Person | None = None  # acts between a read and the next write

    @property
    def options(self) -> Options:
        """The behaviour options (change them inside ``with fake.lock:``)."""
        return self._store.options

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

    def add_spreadsheet(
        self,
        sid: str,
        tabs: Mapping[str, list[list[Any]]] | None = None,
        locale: str = "en_US",
    ) -> None:
        """Create (or reset) a spreadsheet with the given tabs (title -> rows) and locale."""
        with self.lock:
            self._store.books.pop(sid, None)
            for title, rows in (tabs or {}).items():
                self._store.add_tab(sid, title, rows, 1000, 26)
            self._store.books.setdefault(sid, Book())
            self._store.books[sid].locale = locale

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
            return self._store.add_tab(sid, title, rows, row_count, col_count).sheet_id

    def tab(self, sid: str, title: str) -> Tab:
        """The live tab object; change it only inside ``with fake.lock:``."""
        with self.lock:
            return self._store.tab(sid, title)

    def rows(self, sid: str, title: str) -> list[list[Any]]:
        """A copy of the tab's cells, trailing empty cells and rows trimmed."""
        with self.lock:
            out = []
            for row in self._store.tab(sid, title).rows:
                cells = list(row)
                while cells and empty(cells[-1]):
                    cells.pop()
                out.append(cells)
            while out and not out[-1]:
                out.pop()
            return out

    def set_rows(self, sid: str, title: str, rows: list[list[Any]]) -> None:
        """Replace the tab's cells wholesale (metadata stays where it was)."""
        with self.lock:
            tab = self._store.tab(sid, title)
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
            if any(not empty(c) for c in row):
                out.append({h: (row[i] if i < len(row) else "") for i, h in enumerate(header) if h})
        return out

    def find(
        self, sid: str, title: str, record_id: str, id_column: str = "id"
    ) -> list[dict[str, Any]]:
        """Every row whose id cell equals ``record_id``."""
        return [
            r for r in self.records(sid, title, id_column) if str(r.get(id_column, "")) == record_id
        ]

    def developer_metadata(self, sid: str) -> list[dict[str, Any]]:
        """Every developer metadata entry of the spreadsheet, as Google shapes it, by id."""
        with self.lock:
            metas = sorted(self._store.book(sid).metadata.values(), key=lambda m: m.metadata_id)
            return [m.to_json() for m in metas]

    # -- a person editing the sheet (each action is one atomic edit; metadata moves with rows)

    def edit(self, sid: str, requests: list[dict[str, Any]]) -> None:
        """Apply ``spreadsheets.batchUpdate`` subrequests as a person would (not logged)."""
        with self.lock:
            self._store.apply_batch(sid, requests)

    def insert_rows(self, sid: str, title: str, row: int, rows: list[list[Any]]) -> None:
        """Insert ``rows`` so that the first becomes 1-based row ``row``."""
        with self.lock:
            sheet_id = self._store.tab(sid, title).sheet_id
            span = {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": row - 1}
            self.edit(
                sid, [{"insertDimension": {"range": {**span, "endIndex": row - 1 + len(rows)}}}]
            )
            tab = self._store.tab(sid, title)
            for i, values in enumerate(rows):
                for j, value in enumerate(values):
                    tab.set(row - 1 + i, j, value)

    def delete_rows(self, sid: str, title: str, row: int, count: int = 1) -> None:
        """Delete ``count`` rows from 1-based row ``row``."""
        with self.lock:
            sheet_id = self._store.tab(sid, title).sheet_id
            span = {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": row - 1}
            self.edit(sid, [{"deleteDimension": {"range": {**span, "endIndex": row - 1 + count}}}])

    def move_rows(self, sid: str, title: str, row: int, count: int, before: int) -> None:
        """Move ``count`` rows from 1-based ``row`` to sit before 1-based row ``before``."""
        with self.lock:
            sheet_id = self._store.tab(sid, title).sheet_id
            source = {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": row - 1}
            move = {
                "source": {**source, "endIndex": row - 1 + count},
                "destinationIndex": before - 1,
            }
            self.edit(sid, [{"moveDimension": move}])

    def sort_rows(
        self, sid: str, title: str, column: int, first_row: int = 2, descending: bool = False
    ) -> None:
        """Sort the rows from 1-based ``first_row`` down by 1-based ``column`` (like the UI)."""
        with self.lock:
            tab = self._store.tab(sid, title)
            spec = {
                "dimensionIndex": column - 1,
                "sortOrder": "DESCENDING" if descending else "ASCENDING",
            }
            grid = {"sheetId": tab.sheet_id, "startRowIndex": first_row - 1}
            self.edit(sid, [{"sortRange": {"range": grid, "sortSpecs": [spec]}}])

    def rename_tab(self, sid: str, title: str, new_title: str) -> None:
        """Rename a tab (its sheetId stays)."""
        with self.lock:
            sheet_id = self._store.tab(sid, title).sheet_id
            update = {"properties": {"sheetId": sheet_id, "title": new_title}, "fields": "title"}
            self.edit(sid, [{"updateSheetProperties": update}])

    def set_cell(self, sid: str, title: str, row: int, column: int, value: Any) -> None:
        """Type ``value`` into 1-based (row, column)."""
        with self.lock:
            self._store.tab(sid, title).set(row - 1, column - 1, value)

    def _person_acts(self, kind: str, sid: str) -> None:
        """Track reads per spreadsheet; before a write that follows one, let the person act."""
        if kind in READ_KINDS:
            self._read_since_write.add(sid)
        elif kind in WRITE_KINDS and sid in self._read_since_write:
            self._read_since_write.discard(sid)
            if self.person is not None:
                self.person(self, sid)

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
            self._store.poison[value] = message

    def clear_faults(self) -> None:
        """Forget pending faults and poison values."""
        with self.lock:
            self._faults.clear()
            self._store.poison.clear()

    def chaos(self, rate: float, seed: int = 0) -> None:
        """From now on, each admitted API request meets a fault with probability ``rate``:
        a 429, a 503 (neither applied), or its answer lost (applied, then the connection
        dropped or a 503); ``rate`` 0 stops it."""
        with self.lock:
            self._chaos = (rate, random.Random(seed)) if rate else None

    def _take_fault(self, kind: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.kinds is None or kind in fault.kinds):
                fault.remaining -= 1
                return fault
        if self._chaos is not None and kind in READ_KINDS | WRITE_KINDS:
            rate, rng = self._chaos
            if rng.random() < rate:
                status, lose, mode = rng.choice(
                    [
                        (429, False, ""),
                        (503, False, ""),
                        (503, True, "disconnect"),
                        (503, True, "503"),
                    ]
                )
                return _Fault(1, status, None, None, lose, mode)
        return None

    # -- quota

    def _account(self, authorization: str | None) -> str:
        token = (authorization or "").removeprefix("Bearer ").strip()
        return self._tokens.get(token, token or "anonymous")

    def _refused_by_quota(self, call: Call, handler: _Handler) -> bool:
        """Count ``call`` against its account's quota; answer Google's 429 if it is spent."""
        kind = "write" if call.kind in WRITE_KINDS else "read" if call.kind in READ_KINDS else ""
        if self.quota is None or not kind:
            return False
        wait = self.quota.admit(call.account, kind)
        if wait is None:
            return False
        call.status, call.quota = 429, True
        headers = {}
        if self.quota.retry_after_header:
            headers["Retry-After"] = str(max(1, round(wait / self.quota.time_factor)))
        handler._reply(429, {"error": self.quota.error(kind)}, headers)
        return True

    def quota_counts(self, account: str | None = None) -> dict[str, int]:
        """Requests admitted and refused (429) per kind; all zero when no quota is set."""
        if self.quota is None:
            return {"read": 0, "write": 0, "read_429": 0, "write_429": 0}
        return self.quota.counts(account)

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

    # -- dispatch

    def _token(self, form: bytes) -> dict[str, Any]:
        """A service account's JWT grant (token_uri = url + /token)."""
        token = f"fake-token-{len(self.calls)}"
        self._tokens[token] = _jwt_issuer(form) or token
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _dispatch(
        self,
        kind: str,
        sid: str,
        target: str | None,
        query: dict[str, list[str]],
        body: Any,
        body_bytes: int,
    ) -> Any:
        store = self._store
        limit = store.options.max_body_bytes
        if limit is not None and body_bytes > limit:
            raise ApiError(413, "Request payload size exceeds the limit.")
        render = _q(query, "valueRenderOption") or "FORMATTED_VALUE"
        if kind == "spreadsheets.get":
            return store.metadata(sid)
        if kind == "values.get":
            return store.read(sid, target or "", render)
        if kind == "values.batchGet":
            ranges = [store.read(sid, r, render) for r in query.get("ranges", [])]
            return {"spreadsheetId": sid, "valueRanges": ranges}
        if kind == "values.batchGetByDataFilter":
            return store.batch_get_by_filter(sid, body)
        if kind == "developerMetadata.search":
            return md.search(store.book(sid), body)
        if kind == "developerMetadata.get":
            meta = store.book(sid).metadata.get(int(target or 0) if (target or "").isdigit() else 0)
            if meta is None:
                raise ApiError(404, f"No developer metadata with ID: {target}")
            return meta.to_json()
        if kind == "values.batchUpdate":
            return store.batch_update_values(sid, body)
        if kind == "values.batchUpdateByDataFilter":
            return store.batch_update_by_filter(sid, body)
        if kind == "values.update":
            return store.update_values(sid, target or "", query, body)
        if kind == "values.append":
            return store.append(sid, target or "", query, body)
        if kind == "spreadsheets.batchUpdate":
            return store.batch_update(sid, body, _q(query, "fields"))
        raise ApiError(404, "Not found")
